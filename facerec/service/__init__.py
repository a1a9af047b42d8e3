"""`facerec serve`: the engine as an HTTP service over one gallery (docs/serving.md).

- app: the FastAPI application: routes, keys, errors as {"error": "one line"};
- models: the models loaded once, and the first stage of an upload (decode, detect, align);
- batching: the images of concurrent requests detected in one detector call, their faces embedded in
  one backbone call;
- view: the gallery version being answered from, replaced when another becomes current;
- edits: enrolling and deleting faces through the gallery's atomic versions;
- people, thumbnails: the people of a clustered library, named, merged and moved as `facerec people`
  does; a face cut from its photo for the page;
- answers: identification and verification of embedded faces;
- video: uploaded clips followed with the server's models (facerec.video's Follower);
- stream: the /v1/stream WebSocket, camera frames named as they come;
- auth, limits: API keys, loopback-only without keys; bounds on request bodies (size, time, number
  being received), on the queue and on decoded pixels in flight;
- server: loading, binding and running it under uvicorn; static/: the web page.
"""
