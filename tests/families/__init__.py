"""Every model family served at once by one gateway and one worker per family, each equal to its
reference library. The services start once for the package (conftest.py)."""
