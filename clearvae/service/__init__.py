"""The REST service of ``clearvae serve``: a thin HTTP front end over the library.

``settings`` (what it runs with and its limits), ``gate`` (token and body size, before the app
reads a request), ``uploads`` (files checked from their headers, in a private folder per job),
``models`` (models by name), ``jobs`` (the bounded queue and worker pool, cancellation),
``tasks`` (the library calls behind each endpoint), ``app`` (the FastAPI app: routes and
errors), ``server`` (uvicorn). ``static/`` is where the web page goes.

``app``, ``gate`` and ``server`` need the ``serve`` extra (FastAPI, uvicorn, python-multipart);
the rest imports without it.
"""
