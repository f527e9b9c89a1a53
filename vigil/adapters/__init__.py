"""Ray and Starlette at the edges both Serve applications share: the web guard and error
answers, the alias board actor, and how an application boots."""
