// The chat page: keeps the conversation, sends it to /v1/chat/completions with stream: true,
// and renders the Server-Sent Events as they arrive (content deltas, tool-call deltas).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { model: null, history: [], controller: null };

async function loadModel() {
  try {
    const response = await fetch("/v1/models");
    const body = await response.json();
    state.model = body.data[0].id;
    $("model").textContent = state.model;
  } catch (error) {
    $("model").textContent = "model list unavailable: " + error;
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = text;
  div.append(label, body);
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history);
  const body = {
    model: state.model,
    messages,
    stream: true,
    temperature: parseFloat($("temperature").value),
    max_tokens: parseInt($("max-tokens").value, 10) || 256,
  };
  const choice = $("tool-choice").value;
  if (choice !== "off") {
    body.tools = JSON.parse($("tools").value);
    body.tool_choice = choice;
  }
  return body;
}

// Reads "data: ..." lines of an SSE body and calls onData with each parsed JSON object.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") return;
        onData(JSON.parse(payload));
      }
    }
  }
}

async function send(text) {
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const div = addMessage("assistant", "");
  const content = div.querySelector(".content");
  const calls = [];
  let reply = "";
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  $("status").textContent = "generating…";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      const error = await response.json();
      throw new Error(error.error ? error.error.message : response.statusText);
    }
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        if (delta.content) {
          reply += delta.content;
          content.textContent = reply;
        }
        for (const call of delta.tool_calls || []) {
          if (!calls[call.index]) {
            const box = document.createElement("div");
            box.className = "tool-call";
            div.append(box);
            calls[call.index] = { id: call.id, name: call.function.name, arguments: "", box };
          }
          const entry = calls[call.index];
          entry.arguments += call.function.arguments || "";
          entry.box.textContent = "🔧 " + entry.name + "(" + entry.arguments + ")";
        }
        if (choice.finish_reason) {
          const finish = document.createElement("div");
          finish.className = "finish";
          finish.textContent = "finish: " + choice.finish_reason;
          div.append(finish);
        }
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    });
    const message = { role: "assistant", content: reply };
    if (calls.length) {
      message.tool_calls = calls.map((c) => ({
        id: c.id, type: "function", function: { name: c.name, arguments: c.arguments },
      }));
    }
    state.history.push(message);
    $("status").textContent = "";
  } catch (error) {
    if (error.name === "AbortError") {
      $("status").textContent = "stopped";
      state.history.push({ role: "assistant", content: reply });
    } else {
      div.classList.add("error");
      content.textContent = reply + "\n[" + error.message + "]";
      $("status").textContent = "error";
      state.history.pop();
    }
  } finally {
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("clear").addEventListener("click", () => {
  state.history = [];
  $("messages").replaceChildren();
});
$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = $("temperature").value;
});
loadModel();
