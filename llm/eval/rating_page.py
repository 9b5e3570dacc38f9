"""The rating page: one prompt at a time, two answers side by side labelled A and B, keyboard first.

Keys: `a` or `b` picks that answer, `t` or `=` a tie, `s` skips to the next prompt (it comes back
later), Enter writes a note (Enter again, or Escape, returns to the keys; Shift+Enter is a new line).
Model text goes into the page with `textContent` only, never as markup: it is untrusted.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>llmpipe rate</title>
<link rel="stylesheet" href="/rating.css">
<script src="/rating.js" defer></script>
</head>
<body>
<header>
  <h1>Which answer is better?</h1>
  <span id="progress">loading</span>
</header>
<main id="card" hidden>
  <section class="prompt"><h2>Prompt</h2><pre id="prompt"></pre></section>
  <div class="answers">
    <section><h2>A</h2><pre id="answer-a"></pre></section>
    <section><h2>B</h2><pre id="answer-b"></pre></section>
  </div>
  <div class="controls">
    <button id="pick-a" type="button">A is better <kbd>a</kbd></button>
    <button id="pick-tie" type="button">Tie <kbd>t</kbd></button>
    <button id="pick-b" type="button">B is better <kbd>b</kbd></button>
    <button id="skip" type="button">Skip <kbd>s</kbd></button>
  </div>
  <textarea id="note" rows="2" maxlength="2000"
            placeholder="Optional note: Enter to write, Enter again to go back to the keys"></textarea>
  <p id="status" role="status"></p>
</main>
<p id="done" hidden></p>
</body>
</html>
"""

PAGE_JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
let queue = [], total = 0, rated = 0, busy = false;

async function load() {
  const response = await fetch("/api/items", {cache: "no-store"});
  const data = await response.json();
  queue = data.items; total = data.total; rated = data.rated;
  show();
}

function show() {
  $("progress").textContent = `${rated} rated of ${total}`;
  const item = queue[0];
  $("card").hidden = !item;
  $("done").hidden = !!item;
  if (!item) {
    $("done").textContent = `All ${total} prompts rated.`;
    return;
  }
  // Untrusted model text: set as text, never parsed as HTML.
  $("prompt").textContent = item.prompt;
  $("answer-a").textContent = item.A;
  $("answer-b").textContent = item.B;
  $("note").value = "";
  $("status").textContent = "";
  document.body.dataset.index = String(item.index);
}

async function rate(choice) {
  const item = queue[0];
  if (busy || !item) return;
  busy = true;
  try {
    const response = await fetch("/api/rate", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({index: item.index, choice: choice, note: $("note").value}),
    });
    const data = await response.json();
    // 409: rated already (another tab); move on all the same.
    if (!response.ok && response.status !== 409) {
      $("status").textContent = data.error || response.statusText;
      return;
    }
    rated = data.rated; total = data.total;
    queue.shift();
    show();
  } catch (err) {
    $("status").textContent = `could not save the rating: ${err}`;
  } finally {
    busy = false;
  }
}

function skip() {
  if (queue.length > 1) queue.push(queue.shift());
  show();
}

document.addEventListener("keydown", (event) => {
  const note = $("note");
  if (document.activeElement === note) {
    if ((event.key === "Enter" && !event.shiftKey) || event.key === "Escape") {
      event.preventDefault();
      note.blur();
    }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  if (key === "a") rate("A");
  else if (key === "b") rate("B");
  else if (key === "t" || key === "=") rate("tie");
  else if (key === "s") skip();
  else if (event.key === "Enter") note.focus();
  else return;
  event.preventDefault();
});

for (const [id, action] of [["pick-a", () => rate("A")], ["pick-b", () => rate("B")],
                            ["pick-tie", () => rate("tie")], ["skip", skip]]) {
  $(id).addEventListener("click", (event) => { event.currentTarget.blur(); action(); });
}
load().catch((err) => { $("progress").textContent = `could not load the prompts: ${err}`; });
"""

PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 1rem 2rem; color: #222; }
header { display: flex; justify-content: space-between; align-items: baseline; }
h1 { font-size: 1.3rem; } h2 { font-size: 1rem; margin: 0 0 .4rem; }
pre { white-space: pre-wrap; word-break: break-word; background: #f5f5f5; padding: .8rem; border-radius: 4px;
      min-height: 3rem; margin: 0; font-size: .95rem; }
.answers { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; margin: 1rem 0; }
.controls { display: flex; gap: .6rem; margin-bottom: .6rem; }
button { font-size: 1rem; padding: .4rem .9rem; cursor: pointer; }
kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 .3rem; font-size: .8rem; }
textarea { width: 100%; font: inherit; box-sizing: border-box; }
#status { color: #a00; min-height: 1.2rem; }
"""
