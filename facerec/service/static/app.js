// The facerec page: identify a photo (drawn with names and distances), name the faces of the camera as
// they come, enroll the largest face of a photo under a name, list the identities, and name, merge and
// move the people `facerec cluster` found. It talks only to this server, through the same /v1 API as
// any client.
"use strict";

const KNOWN = "#2ecc40";
const UNKNOWN = "#ff4136";
const $ = (id) => document.getElementById(id);

function authorization() {
  const key = sessionStorage.getItem("facerec-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// One API call (`body`: a form, or an object sent as JSON); resolves to the JSON answer, rejects with
// the server's one-line error.
async function call(method, url, body) {
  const json = body !== undefined && !(body instanceof FormData);
  const headers = { ...authorization(), ...(json ? { "Content-Type": "application/json" } : {}) };
  const response = await fetch(url, { method, headers, body: json ? JSON.stringify(body) : body });
  const text = await response.text();
  const answer = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const reason = answer && answer.error ? answer.error : response.statusText;
    throw new Error(`${response.status}: ${reason}`);
  }
  return answer;
}

function say(element, message, failed = false) {
  element.textContent = message;
  element.classList.toggle("error", failed);
}

function chosenPhoto() {
  const file = $("photo").files[0];
  if (!file) throw new Error("choose a photo first");
  const form = new FormData();
  form.append("image", file, file.name);
  return { file, form };
}

async function showGallery() {
  try {
    const health = await call("GET", "/health");
    say(
      $("gallery"),
      health.gallery
        ? `gallery ${health.gallery}: ${count(health.faces, "face")} of ${count(health.identities, "identity")}`
        : "gallery empty: enroll a face to start",
    );
    const identities = await call("GET", "/v1/identities");
    $("identities").replaceChildren(
      ...identities.map(({ identity, faces }) => {
        const item = document.createElement("li");
        item.textContent = `${identity} (${faces})`;
        return item;
      }),
    );
  } catch (error) {
    say($("gallery"), error.message, true);
  }
}

function count(number, noun) {
  const plural = noun.endsWith("y") ? `${noun.slice(0, -1)}ies` : `${noun}s`;
  return `${number} ${number === 1 ? noun : plural}`;
}

function label(face) {
  const name = face.identity === null ? "unknown" : face.identity;
  return face.distance === null ? name : `${name} ${face.distance.toFixed(2)}`;
}

// Every face boxed and labelled on a canvas of `width` x `height` pixels, as `facerec identify
// --annotate` draws them: the photo's canvas, and the overlay over the camera's video.
function drawFaces(pen, faces, width, height) {
  const line = Math.max(2, Math.min(width, height) / 200);
  const size = Math.max(12, Math.min(width, height) / 30);
  pen.font = `${size}px sans-serif`;
  pen.textBaseline = "top";
  for (const face of faces) {
    const [x1, y1, x2, y2] = face.box;
    const colour = face.identity === null ? UNKNOWN : KNOWN;
    pen.lineWidth = line;
    pen.strokeStyle = colour;
    pen.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = label(face);
    const textWidth = pen.measureText(text).width;
    const x = Math.max(0, Math.min(x1 - line / 2, width - textWidth - 2 * line)); // inside the picture
    const y = y2 + size + 2 * line <= height ? y2 : Math.max(y1 - size - 2 * line, 0);
    pen.fillStyle = colour;
    pen.fillRect(x, y, textWidth + 2 * line, size + 2 * line);
    pen.fillStyle = "white";
    pen.fillText(text, x + line, y + line);
  }
}

// The photo with every face boxed and labelled.
async function draw(file, faces) {
  const picture = await createImageBitmap(file); // EXIF orientation applied, as the server's boxes are
  const canvas = $("picture");
  canvas.width = picture.width;
  canvas.height = picture.height;
  const pen = canvas.getContext("2d");
  pen.drawImage(picture, 0, 0);
  drawFaces(pen, faces, picture.width, picture.height);
  canvas.hidden = false;
}

function tabulate(faces) {
  const rows = faces.map((face, number) => {
    const row = document.createElement("tr");
    const cells = [
      String(number + 1),
      face.identity === null ? "unknown" : face.identity,
      face.distance === null ? "" : face.distance.toFixed(3),
      face.candidates.map((c) => `${c.identity} ${c.distance.toFixed(3)}`).join(", "),
    ];
    for (const text of cells) {
      const cell = row.insertCell();
      cell.textContent = text;
    }
    row.cells[1].className = face.identity === null ? "unknown" : "known";
    return row;
  });
  $("faces").tBodies[0].replaceChildren(...rows);
  $("faces").hidden = false;
}

async function identify(event) {
  event.preventDefault();
  const button = $("identify");
  button.disabled = true;
  say($("status"), "identifying…");
  try {
    const { file, form } = chosenPhoto();
    const threshold = $("threshold").value;
    const query = threshold === "" ? "" : `?threshold=${encodeURIComponent(threshold)}`;
    const answer = await call("POST", `/v1/identify${query}`, form);
    await draw(file, answer.faces);
    tabulate(answer.faces);
    const named = answer.faces.filter((face) => face.identity !== null).length;
    say($("status"), `${count(answer.faces.length, "face")}, ${named} known`);
  } catch (error) {
    say($("status"), error.message, true);
  } finally {
    button.disabled = false;
  }
}

async function enroll(event) {
  event.preventDefault();
  const button = $("enroll");
  button.disabled = true;
  say($("enrolled"), "enrolling…");
  try {
    const { form } = chosenPhoto();
    const name = $("name").value;
    const answer = await call("POST", `/v1/identities/${encodeURIComponent(name)}/faces`, form);
    say($("enrolled"), `enrolled face ${answer.face_id} of ${answer.identity}`);
    await showGallery();
  } catch (error) {
    say($("enrolled"), error.message, true);
  } finally {
    button.disabled = false;
  }
}

// The camera: frames go to /v1/stream as JPEG snapshots, at most FRAME_MS apart and never more than
// one waiting for the server's `done`; the faces of the newest frame answered are drawn over the video.
const FRAME_MS = 250;
const FRAME_WIDTH = 640; // frames are sent at most this wide: enough to name faces, cheap to send
const camera = { media: null, socket: null, timer: null, waiting: false, done: 0, dropped: 0, seen: new Map() };

function streamAddress() {
  const threshold = $("threshold").value;
  const query = threshold === "" ? "" : `?threshold=${encodeURIComponent(threshold)}`;
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/v1/stream${query}`;
}

async function startCamera() {
  if (!navigator.mediaDevices) throw new Error("the camera needs this page over https (or on localhost)");
  camera.media = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: FRAME_WIDTH } } });
  const video = $("video");
  video.srcObject = camera.media;
  await video.play();
  $("live-view").hidden = false;
  Object.assign(camera, { waiting: false, done: 0, dropped: 0, seen: new Map() });
  $("seen").replaceChildren();
  drawOverlay([]);
  const socket = new WebSocket(streamAddress());
  camera.socket = socket;
  socket.addEventListener("open", () => {
    const key = sessionStorage.getItem("facerec-key");
    if (key) socket.send(JSON.stringify({ key })); // a browser cannot send an Authorization header here
  });
  socket.addEventListener("message", (event) => answered(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    if (event.code !== 1000) say($("camera-status"), `stream closed: ${event.reason || event.code}`, true);
    else say($("camera-status"), `camera off: ${cameraCounts()}`);
    stopCamera();
  });
  $("camera").textContent = "Stop camera";
}

// Stop sending; ask the server for the tracks still open (it answers them, then closes).
function stopCamera() {
  clearInterval(camera.timer);
  camera.timer = null;
  if (camera.media) camera.media.getTracks().forEach((track) => track.stop());
  camera.media = null;
  const socket = camera.socket;
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ finish: true }));
  else camera.socket = null;
  $("camera").textContent = "Start camera";
}

function sendFrame() {
  const video = $("video");
  const socket = camera.socket;
  if (camera.waiting || !socket || socket.readyState !== WebSocket.OPEN || video.readyState < 2) return;
  const scale = Math.min(1, FRAME_WIDTH / video.videoWidth);
  const snapshot = $("snapshot");
  snapshot.width = Math.round(video.videoWidth * scale);
  snapshot.height = Math.round(video.videoHeight * scale);
  snapshot.getContext("2d").drawImage(video, 0, 0, snapshot.width, snapshot.height);
  camera.waiting = true;
  snapshot.toBlob((jpeg) => {
    // encoding takes a while: the camera may have stopped, or the stream closed, meanwhile
    if (jpeg && camera.media && socket.readyState === WebSocket.OPEN) socket.send(jpeg);
    else camera.waiting = false;
  }, "image/jpeg", 0.85);
}

function cameraCounts() {
  return `${count(camera.done, "frame")} named, ${camera.dropped} dropped`;
}

// One message of the stream (docs/serving.md): ready, a frame's faces, a track, done, or an error.
function answered(message) {
  if (message.ready) {
    say($("camera-status"), "camera on");
    camera.timer = setInterval(sendFrame, FRAME_MS);
  } else if (message.error) {
    say($("camera-status"), message.error, true);
  } else if ("done" in message) {
    camera.waiting = false;
    camera.done += 1;
    camera.dropped = message.dropped;
    if (camera.media) say($("camera-status"), `camera on: ${cameraCounts()}`);
  } else if ("faces" in message) {
    drawOverlay(message.faces);
    message.faces.forEach(remember);
  } else if ("track" in message) {
    remember(message);
  }
}

function drawOverlay(faces) {
  const overlay = $("overlay");
  overlay.width = $("snapshot").width; // the frame's pixels, which the boxes are in
  overlay.height = $("snapshot").height;
  drawFaces(overlay.getContext("2d"), faces, overlay.width, overlay.height);
}

// The names seen, each with its nearest distance so far.
function remember({ identity, distance }) {
  if (identity === null) return;
  const best = camera.seen.get(identity);
  if (best !== undefined && best <= distance) return;
  camera.seen.set(identity, distance);
  $("seen").replaceChildren(
    ...[...camera.seen.keys()].sort().map((name) => {
      const item = document.createElement("li");
      item.textContent = label({ identity: name, distance: camera.seen.get(name) });
      return item;
    }),
  );
}

async function toggleCamera() {
  const button = $("camera");
  button.disabled = true;
  try {
    if (camera.socket) stopCamera();
    else await startCamera();
  } catch (error) {
    say($("camera-status"), error.message, true);
    stopCamera();
  } finally {
    button.disabled = false;
  }
}

// The people: a row per person with a few of its faces (each with a select that moves it to another
// person or a new one), its name field, and a box that selects it for a merge; the faces of nobody last.
const THUMBNAILS_AT_ONCE = 4; // thumbnail requests in flight: each decodes a photo on the server
const thumbnails = new Map(); // face id -> the promise of its picture's object URL, for the page's life
const slots = { free: THUMBNAILS_AT_ONCE, waiting: [] };

async function inSlot(work) {
  if (slots.free > 0) slots.free -= 1;
  else await new Promise((go) => slots.waiting.push(go));
  try {
    return await work();
  } finally {
    const next = slots.waiting.shift();
    if (next) next();
    else slots.free += 1;
  }
}

// An <img> cannot send the API key: the picture is fetched with it and shown from a blob.
function thumbnail(face) {
  if (!thumbnails.has(face)) {
    const made = inSlot(async () => {
      const url = `/v1/faces/${encodeURIComponent(face)}/thumbnail`;
      const response = await fetch(url, { headers: authorization() });
      if (!response.ok) throw new Error(`${response.status}: ${(await response.json()).error}`);
      return URL.createObjectURL(await response.blob());
    });
    made.catch(() => thumbnails.delete(face)); // asked again at the next listing
    thumbnails.set(face, made);
  }
  return thumbnails.get(face);
}

function personLabel({ person, name }) {
  return name === null ? person : `${name} (${person})`;
}

function faceFigure(face, owner, everyone) {
  const figure = document.createElement("figure");
  const picture = document.createElement("img");
  picture.alt = `face ${face}`;
  picture.width = picture.height = 64;
  thumbnail(face).then(
    (url) => (picture.src = url),
    (error) => {
      picture.classList.add("missing");
      picture.title = error.message;
    },
  );
  const move = document.createElement("select");
  move.setAttribute("aria-label", `move face ${face}`);
  const choices = [["", "move to…"]];
  for (const other of everyone) {
    if (other.person !== null && other.person !== owner) choices.push([other.person, personLabel(other)]);
  }
  choices.push(["new", "a new person"]);
  move.append(...choices.map(([value, text]) => new Option(text, value)));
  move.addEventListener("change", () => {
    const url = `/v1/faces/${encodeURIComponent(face)}/move`;
    const said = (moved) => `moved face ${face} to ${personLabel(moved)}`;
    change(`moving face ${face}…`, "POST", url, { to: move.value }, said);
  });
  figure.append(picture, move);
  return figure;
}

function personItem(record, everyone) {
  const item = document.createElement("li");
  item.className = "person";
  if (record.person !== null) item.dataset.person = record.person;
  const head = document.createElement("div");
  head.className = "person-head";
  const title = document.createElement("span");
  title.className = "person-title";
  if (record.person === null) {
    title.textContent = `Nobody: ${count(record.faces, "face")}`;
    head.append(title);
  } else {
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.value = record.person;
    pick.className = "merge-pick";
    pick.setAttribute("aria-label", `select ${record.person} to merge`);
    pick.addEventListener("change", pickedForMerge);
    const name = document.createElement("strong");
    name.textContent = record.name === null ? "(no name)" : record.name;
    title.append(name, ` ${record.person}, ${count(record.faces, "face")}`);
    const form = document.createElement("form");
    form.className = "name-form";
    const field = document.createElement("input");
    field.type = "text";
    field.required = true;
    field.autocomplete = "off";
    field.value = record.name ?? "";
    field.placeholder = "name";
    field.setAttribute("aria-label", `name of ${record.person}`);
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Name";
    form.append(field, button);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const url = `/v1/people/${encodeURIComponent(record.person)}/name`;
      const said = (named) => `${named.person} is ${named.name}`;
      change(`naming ${record.person}…`, "POST", url, { name: field.value }, said);
    });
    head.append(pick, title, form);
  }
  const faces = document.createElement("div");
  faces.className = "person-faces";
  faces.append(...record.sample.map((face) => faceFigure(face, record.person, everyone)));
  if (record.faces > record.sample.length && record.person !== null) {
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = `all ${record.faces}`;
    more.addEventListener("click", async () => {
      try {
        const { faces: all } = await call("GET", `/v1/people/${encodeURIComponent(record.person)}`);
        faces.replaceChildren(...all.map(({ face_id }) => faceFigure(face_id, record.person, everyone)));
      } catch (error) {
        say($("people-said"), error.message, true);
      }
    });
    faces.append(more);
  }
  item.append(head, faces);
  return item;
}

async function showPeople() {
  try {
    const everyone = await call("GET", "/v1/people");
    const persons = everyone.filter((record) => record.person !== null);
    const nobody = everyone[everyone.length - 1];
    const found = `${persons.length} ${persons.length === 1 ? "person" : "people"}`;
    say(
      $("people-status"),
      persons.length || nobody.faces
        ? `${found}, ${count(nobody.faces, "face")} of nobody`
        : "no people yet: `facerec cluster PHOTOS` with this gallery finds them",
    );
    const shown = nobody.faces ? everyone : persons;
    $("people").replaceChildren(...shown.map((record) => personItem(record, everyone)));
    pickedForMerge();
  } catch (error) {
    say($("people-status"), error.message, true);
  }
}

function pickedForMerge() {
  $("merge").disabled = document.querySelectorAll(".merge-pick:checked").length < 2;
}

// One of the owner's choices: say what is under way, send it, say the answer, show the people again.
async function change(doing, method, url, body, done) {
  say($("people-said"), doing);
  try {
    say($("people-said"), done(await call(method, url, body)));
  } catch (error) {
    say($("people-said"), error.message, true);
  }
  await Promise.all([showGallery(), showPeople()]);
}

function merge() {
  const persons = [...document.querySelectorAll(".merge-pick:checked")].map((pick) => pick.value);
  const said = (kept) => `merged into ${personLabel(kept)}`;
  change(`merging ${persons.join(", ")}…`, "POST", "/v1/people/merge", { people: persons }, said);
}

function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem("facerec-key", $("key").value.trim());
  $("key").value = "";
  showGallery();
  showPeople();
}

$("identify-form").addEventListener("submit", identify);
$("enroll-form").addEventListener("submit", enroll);
$("key-form").addEventListener("submit", useKey);
$("camera").addEventListener("click", toggleCamera);
$("merge").addEventListener("click", merge);
showGallery();
showPeople();
