"use strict";
// The chat page: asks /v1/chat/completions (streamed, server-sent events) and shows the answer with its
// sources; 👍/👎 rate it. In compare mode the champion and the challenger answer side by side in a random
// order (which is which is shown after the vote) and the choice is sent to /v1/feedback. Text from the
// server is only ever set with textContent.
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "lifecycle-serve-key";
  const needsKey = document.body.dataset.needsKey === "true";
  let models = {primary: document.body.dataset.model, challenger: null};
  let answer = null; // the single answer shown: {id, model, ...}
  let pair = null; // compare mode: {left, right}
  let busy = false;

  function uuid4() {
    const b = crypto.getRandomValues(new Uint8Array(16)); // crypto.randomUUID needs a secure context
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
  }

  function status(id, text, isError = false) {
    $(id).textContent = text;
    $(id).classList.toggle("error", isError);
  }

  function headers() {
    const h = {"Content-Type": "application/json", Accept: "application/json"};
    const key = sessionStorage.getItem(KEY);
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  async function problem(response) {
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) $("key-box").hidden = false;
    return (body.error && body.error.message) || `the server answered ${response.status}`;
  }

  async function loadHealth() {
    const response = await fetch("/health", {headers: {Accept: "application/json"}});
    if (!response.ok) return;
    const health = await response.json();
    models = health.models;
    $("served").textContent = Object.entries(health.served)
      .map(([alias, s]) => `${alias}: ${s.model} (index ${s.rag_index.table} v${s.rag_index.version})`).join(" · ");
    $("compare").disabled = !models.challenger;
    if (!models.challenger) $("compare").checked = false;
  }

  function showSources(list, sources) {
    list.replaceChildren();
    for (const s of sources || []) {
      const li = document.createElement("li");
      const title = document.createElement("strong");
      title.textContent = s.title;
      const path = document.createElement("span");
      path.className = "path";
      path.textContent = ` ${s.path} [${s.source}]`;
      li.append(title, path);
      list.append(li);
    }
  }

  // One streamed answer: the first event carries sources and the trace id, then text pieces follow.
  async function ask(model, question, box, list) {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), credentials: "same-origin",
      body: JSON.stringify({model, stream: true, messages: [{role: "user", content: question}]}),
    });
    if (!response.ok) throw new Error(await problem(response));
    const got = {id: null, model: null, text: "", sources: [], trace_id: null};
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const data = JSON.parse(line.slice(6));
          if (data.error) throw new Error(data.error.message);
          got.id = data.id;
          got.model = data.model;
          if (data.sources) {
            got.sources = data.sources;
            got.trace_id = data.trace_id;
            showSources(list, data.sources);
          }
          for (const choice of data.choices || []) {
            if (choice.delta && choice.delta.content) {
              got.text += choice.delta.content;
              box.textContent = got.text;
            }
          }
        }
      }
    }
    if (!got.text) box.textContent = "(empty answer)";
    return got;
  }

  function reset(ids) {
    for (const id of ids) $(id).textContent = "";
  }

  async function submitQuestion(event) {
    if (event) event.preventDefault();
    const question = $("question").value.trim();
    if (!question || busy) return;
    busy = true;
    $("ask").disabled = true;
    status("status", "Thinking…");
    $("asked").textContent = question;
    $("asked").hidden = false;
    const comparing = $("compare").checked && models.challenger;
    $("single").hidden = Boolean(comparing);
    $("compare-view").hidden = !comparing;
    try {
      if (comparing) {
        reset(["left-answer", "right-answer", "left-model", "right-model", "compare-status"]);
        const flip = crypto.getRandomValues(new Uint8Array(1))[0] % 2 === 1;
        const [leftModel, rightModel] = flip
          ? [models.challenger, models.primary] : [models.primary, models.challenger];
        pair = null;
        setChoices(true);
        const [left, right] = await Promise.all([
          ask(leftModel, question, $("left-answer"), $("left-sources")),
          ask(rightModel, question, $("right-answer"), $("right-sources")),
        ]);
        pair = {left, right};
        setChoices(false);
      } else {
        reset(["answer", "answer-model", "answer-trace", "rate-status"]);
        answer = null;
        setRating(true);
        answer = await ask(models.primary, question, $("answer"), $("sources"));
        $("answer-model").textContent = answer.model;
        $("answer-trace").textContent = answer.trace_id || "(tracing off)";
        setRating(false);
      }
      status("status", "");
    } catch (err) {
      status("status", `No answer: ${err.message}`, true);
    } finally {
      busy = false;
      $("ask").disabled = false;
    }
  }

  function setRating(disabled) {
    $("rate-up").disabled = disabled;
    $("rate-down").disabled = disabled;
  }

  function setChoices(disabled) {
    for (const b of document.querySelectorAll("[data-choice]")) b.disabled = disabled;
  }

  async function sendFeedback(body, statusId) {
    status(statusId, "Saving…");
    try {
      const response = await fetch("/v1/feedback", {
        method: "POST", headers: headers(), credentials: "same-origin", body: JSON.stringify(body),
      });
      if (!response.ok) throw new Error(await problem(response));
      status(statusId, "Thank you: recorded for the next training round.");
      return true;
    } catch (err) {
      status(statusId, `Not saved: ${err.message}`, true);
      return false;
    }
  }

  async function rate(score) {
    if (!answer) return;
    setRating(true);
    const body = {kind: "rating", feedback_id: uuid4(), completion_id: answer.id, score};
    const ok = await sendFeedback(body, "rate-status");
    if (!ok) setRating(false);
  }

  async function choose(choice) {
    if (!pair) return;
    setChoices(true);
    const body = {kind: "compare", feedback_id: uuid4(), left: pair.left.id, right: pair.right.id, choice};
    if (await sendFeedback(body, "compare-status")) {
      $("left-model").textContent = pair.left.model; // revealed only after the vote
      $("right-model").textContent = pair.right.model;
      pair = null;
    } else {
      setChoices(false);
    }
  }

  $("ask-form").addEventListener("submit", submitQuestion);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) submitQuestion(event);
  });
  $("rate-up").addEventListener("click", () => rate(1));
  $("rate-down").addEventListener("click", () => rate(-1));
  for (const b of document.querySelectorAll("[data-choice]")) {
    b.addEventListener("click", () => choose(b.dataset.choice));
  }
  $("key-box").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    $("api-key").value = "";
    $("key-box").hidden = true;
    status("status", "Key set for this tab.");
  });
  if (needsKey && sessionStorage.getItem(KEY)) $("key-box").hidden = true;
  loadHealth().catch(() => status("status", "Could not read /health", true));
})();
