// Shared by the classifier page (/) and the explorer (/explore): inlined into both where their
// script says so (see `pages.rs`), so each is still served as one file with no external
// resources. The token flow (asks for it on a 401, keeps it in localStorage) and the image
// upload (file input, drop, paste) of elements #token, #token-row, #status, #file and #drop.
const $ = (id) => document.getElementById(id);

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  const token = localStorage.getItem("resnet-token");
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) $("token-row").hidden = false;
  return response;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `Error ${response.status}: ${body.error}`;
  } catch (e) {
    return `Error ${response.status}`;
  }
}

function contentType(file) {
  return file.type && file.type.startsWith("image/") ? file.type : "application/octet-stream";
}

// Calls onFile with an image the user chose, dropped on #drop or pasted, and onToken after a
// token was typed into #token.
function wireUpload(onFile, onToken) {
  $("file").addEventListener("change", (e) => onFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) onFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    for (const item of e.clipboardData.items) {
      if (item.type.startsWith("image/")) { onFile(item.getAsFile()); break; }
    }
  });
  $("token").addEventListener("change", (e) => {
    localStorage.setItem("resnet-token", e.target.value);
    onToken();
  });
}
