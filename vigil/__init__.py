"""Vigil's own floors, each a sub-package; the package a module sits in says its floor.

    vigil.tools      the command line and what only it runs (publishing, the model gate,
                     profiles, examples, dashboards, lifecycle); may import every floor below
    serving | monitoring   the two Serve applications (top-level packages; they never import
                     each other)
    vigil.adapters   Ray and Starlette at the edges both apps share (the web guard, the alias
                     board, app boot)
    vigil.core       pure ground: numpy, yaml and pydantic only (tensors and type tables,
                     messages, files, the repository, aliases, audit, model operations, tokens)

Imports point down only; pyproject.toml's import-linter `layers` contract checks it by package,
so a new module is covered where it is put. Importing a package runs nothing but imports.
"""
