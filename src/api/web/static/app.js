// qstore pages: copy buttons, upload and delete. Everything goes through the HTTP API with the
// token typed into the page; the token is read from the field when needed and stored nowhere.
"use strict";

function token() {
  const field = document.getElementById("token");
  return field ? field.value.trim() : "";
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

// The error a JSON answer names, in words.
function reason(xhrText, status) {
  try {
    const body = JSON.parse(xhrText);
    const e = body.error;
    if (e && typeof e === "object" && e.message) return e.message + " (" + status + ")";
    if (typeof e === "string") return e + " (" + status + ")";
  } catch (_) { /* not JSON */ }
  return "the server answered " + status;
}

function setupCopy() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(text);
      } catch (_) {
        const area = document.createElement("textarea");
        area.value = text;
        document.body.appendChild(area);
        area.select();
        document.execCommand("copy");
        area.remove();
      }
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }
}

// Files keep their path inside a chosen folder (minus the folder itself), as in the repo.
function chosenFiles() {
  const out = [];
  for (const f of document.getElementById("upload-files").files) out.push([f.name, f]);
  for (const f of document.getElementById("upload-folder").files) {
    const parts = (f.webkitRelativePath || f.name).split("/");
    out.push([parts.length > 1 ? parts.slice(1).join("/") : parts[0], f]);
  }
  return out;
}

function setupUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const status = document.getElementById("upload-status");
  const progress = document.getElementById("upload-progress");
  const say = (text, isError) => {
    status.textContent = text;
    status.classList.toggle("error", !!isError);
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const nameField = document.getElementById("upload-name");
    const repo = form.dataset.repo || (nameField ? nameField.value.trim() : "");
    const files = chosenFiles();
    if (!repo) return say("Give the model a name (org/name).", true);
    if (files.length === 0) return say("Choose files or a folder first.", true);
    const data = new FormData();
    for (const [path, file] of files) data.append("file", file, path);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/models/" + repo.split("/").map(encodeURIComponent).join("/"));
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    progress.hidden = false;
    progress.value = 0;
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) progress.value = Math.round((e.loaded / e.total) * 100);
    };
    xhr.onload = () => {
      if (xhr.status === 201) {
        progress.value = 100;
        say("Uploaded " + repo + ". ");
        const link = document.createElement("a");
        link.href = "/" + repo;
        link.id = "uploaded-link";
        link.textContent = "Open it";
        status.appendChild(link);
      } else {
        say("Upload refused: " + reason(xhr.responseText, xhr.status), true);
      }
    };
    xhr.onerror = () => say("Upload failed: the connection was lost.", true);
    say("Uploading " + files.length + " file(s)…");
    xhr.send(data);
  });
}

async function remove(url, question, then) {
  if (!window.confirm(question)) return;
  const answer = await fetch(url, { method: "DELETE", headers: authHeaders() });
  if (answer.ok) {
    then();
  } else {
    const status = document.getElementById("upload-status");
    status.textContent = "Delete refused: " + reason(await answer.text(), answer.status);
    status.classList.add("error");
    document.getElementById("manage").open = true;
  }
}

function setupDelete() {
  const model = document.getElementById("delete-model");
  if (model) {
    model.addEventListener("click", () => {
      const repo = model.dataset.repo;
      remove("/models/" + repo, "Delete " + repo + " and all its revisions?", () => {
        window.location.href = "/";
      });
    });
  }
  for (const button of document.querySelectorAll("button.delete-rev")) {
    button.addEventListener("click", () => {
      const { repo, rev } = button.dataset;
      const url = "/models/" + repo + "?revision=" + encodeURIComponent(rev);
      remove(url, "Delete revision " + rev.slice(0, 10) + " of " + repo + "?", () => {
        window.location.href = "/" + repo;
      });
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupCopy();
  setupUpload();
  setupDelete();
});
