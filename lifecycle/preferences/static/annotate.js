"use strict";
// The annotation page: loads an item from /api/next, lets the annotator pick A (1), B (2) or tie (3) and
// submit (Enter; Ctrl+Enter inside the reason box), posts the vote with the page's CSRF token and loads the
// next item without reloading. Text from the server is only ever set with textContent.
(() => {
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const reasonBox = $("reason");
  let item = null;
  let choice = null;
  let voteId = null; // one per item shown: a retried POST is recognised by the server, never counted twice
  let busy = false;

  function uuid4() {
    const b = crypto.getRandomValues(new Uint8Array(16)); // crypto.randomUUID needs https; this works on http
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function setStatus(text, isError = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", isError);
  }

  function showProgress(p) {
    $("your-votes").textContent = String(p.your_votes);
    $("batch-progress").hidden = !p.batch_id;
    if (!p.batch_id) return;
    $("batch-id").textContent = p.batch_id;
    $("items-left").textContent = String(p.items_left);
    $("items").textContent = String(p.items);
    $("votes").textContent = String(p.votes);
    $("quota").textContent = String(p.quota);
  }

  function showPrompt(messages) {
    const box = $("prompt");
    box.replaceChildren();
    for (const m of messages) {
      const message = document.createElement("div");
      message.className = "message";
      const role = document.createElement("div");
      role.className = "role";
      role.textContent = m.role;
      const content = document.createElement("div");
      content.className = "content";
      content.textContent = m.content;
      message.append(role, content);
      box.append(message);
    }
  }

  function choose(c) {
    if (!item || busy) return;
    choice = c;
    for (const b of document.querySelectorAll("[data-choice]")) {
      b.setAttribute("aria-pressed", String(b.dataset.choice === c));
    }
    $("submit").disabled = false;
  }

  async function call(path, options = {}) {
    const headers = {Accept: "application/json", ...(options.headers || {})};
    const response = await fetch(path, {...options, headers, credentials: "same-origin"});
    if (response.status === 401) {
      window.location.assign("/login");
      throw new Error("signed out");
    }
    return response;
  }

  async function detail(response) {
    const body = await response.json().catch(() => ({}));
    return typeof body.detail === "string" ? body.detail : `the server answered ${response.status}`;
  }

  async function loadNext(message = "") {
    busy = true;
    try {
      const response = await call("/api/next");
      if (!response.ok) throw new Error(await detail(response));
      const data = await response.json();
      showProgress(data.progress);
      item = data.item;
      choice = null;
      voteId = item ? uuid4() : null;
      $("task").hidden = !item;
      $("empty").hidden = Boolean(item);
      if (item) {
        showPrompt(item.prompt);
        $("left").textContent = item.left;
        $("right").textContent = item.right;
        if (reasonBox) {
          reasonBox.value = "";
          if (document.activeElement === reasonBox) reasonBox.blur(); // so 1/2/3 work on the next item
        }
        for (const b of document.querySelectorAll("[data-choice]")) b.setAttribute("aria-pressed", "false");
        $("submit").disabled = true;
      }
      setStatus(message, Boolean(message));
    } catch (err) {
      setStatus(`Could not load the next item: ${err.message}`, true);
    } finally {
      busy = false;
    }
  }

  async function submit() {
    if (!item || !choice || busy) return;
    busy = true;
    $("submit").disabled = true;
    setStatus("Saving…");
    const body = {vote_id: voteId, item_id: item.item_id, choice};
    const reason = reasonBox ? reasonBox.value.trim() : "";
    if (reason) body.reason = reason;
    let next = null;
    try {
      const response = await call("/api/votes", {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
        body: JSON.stringify(body),
      });
      if (response.ok) next = "";
      else if (response.status === 403 || response.status === 409) next = await detail(response); // move on
      else setStatus(await detail(response), true);
    } catch (err) {
      setStatus(`Not saved (${err.message}); press Enter to try again.`, true);
    } finally {
      busy = false;
      $("submit").disabled = !choice;
    }
    if (next !== null) await loadNext(next);
  }

  document.addEventListener("keydown", (event) => {
    if (event.target === reasonBox) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        submit();
      }
      return;
    }
    if (event.altKey || event.ctrlKey || event.metaKey || event.isComposing) return;
    if (event.target.closest && event.target.closest("input, textarea, select, form, a")) return;
    const picked = {1: "left", 2: "right", 3: "tie"}[event.key];
    if (picked) {
      event.preventDefault();
      choose(picked);
    } else if (event.key === "Enter" && choice) {
      event.preventDefault();
      submit();
    }
  });
  for (const b of document.querySelectorAll("[data-choice]")) {
    b.addEventListener("click", () => choose(b.dataset.choice));
  }
  $("submit").addEventListener("click", submit);
  $("refresh").addEventListener("click", () => loadNext());
  loadNext();
})();
