// The facerec page: identify a photo (drawn with names and distances), enroll its largest face under a
// name, list the identities. It talks only to this server, through the same /v1 API as any client.
"use strict";

const KNOWN = "#2ecc40";
const UNKNOWN = "#ff4136";
const $ = (id) => document.getElementById(id);

function authorization() {
  const key = sessionStorage.getItem("facerec-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// One API call; resolves to the JSON answer, rejects with the server's one-line error.
async function call(method, url, body) {
  const response = await fetch(url, { method, body, headers: authorization() });
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
    $("gallery").textContent = health.gallery
      ? `gallery ${health.gallery}: ${count(health.faces, "face")} of ${count(health.identities, "identity")}`
      : "gallery empty: enroll a face to start";
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

// The photo with every face boxed and labelled, as `facerec identify --annotate` draws it.
async function draw(file, faces) {
  const picture = await createImageBitmap(file); // EXIF orientation applied, as the server's boxes are
  const canvas = $("picture");
  canvas.width = picture.width;
  canvas.height = picture.height;
  const pen = canvas.getContext("2d");
  pen.drawImage(picture, 0, 0);
  const line = Math.max(2, Math.min(picture.width, picture.height) / 200);
  const size = Math.max(12, Math.min(picture.width, picture.height) / 30);
  pen.font = `${size}px sans-serif`;
  pen.textBaseline = "top";
  for (const face of faces) {
    const [x1, y1, x2, y2] = face.box;
    const colour = face.identity === null ? UNKNOWN : KNOWN;
    pen.lineWidth = line;
    pen.strokeStyle = colour;
    pen.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = label(face);
    const width = pen.measureText(text).width;
    const x = Math.max(0, Math.min(x1 - line / 2, picture.width - width - 2 * line)); // inside the picture
    const y = y2 + size + 2 * line <= picture.height ? y2 : Math.max(y1 - size - 2 * line, 0);
    pen.fillStyle = colour;
    pen.fillRect(x, y, width + 2 * line, size + 2 * line);
    pen.fillStyle = "white";
    pen.fillText(text, x + line, y + line);
  }
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

function useKey(event) {
  event.preventDefault();
  sessionStorage.setItem("facerec-key", $("key").value.trim());
  $("key").value = "";
  showGallery();
}

$("identify-form").addEventListener("submit", identify);
$("enroll-form").addEventListener("submit", enroll);
$("key-form").addEventListener("submit", useKey);
showGallery();
