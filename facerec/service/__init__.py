"""`facerec serve`: the engine as an HTTP service over one gallery (docs/serving.md).

- app: the FastAPI application: routes, keys, errors as {"error": "one line"};
- models: the models loaded once, and the CPU stage of an upload (decode, detect, align);
- batching: the faces of concurrent requests embedded in one backbone call;
- view: the gallery version being answered from, replaced when another becomes current;
- edits: enrolling and deleting faces through the gallery's atomic versions;
- answers: identification and verification of embedded faces;
- auth, limits: API keys, loopback-only without keys, request size and queue bounds;
- server: loading, binding and running it under uvicorn; static/: the web page.
"""
