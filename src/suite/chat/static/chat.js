// The chat page: WebSocket (session cookie), streaming deltas, stop, regenerate, reconnect + resume.
(() => {
  const root = document.getElementById("chat");
  if (!root) return;
  const config = JSON.parse(root.dataset.config);
  const log = document.getElementById("log");
  const statusEl = document.getElementById("status");
  const input = document.getElementById("input");
  const stopBtn = document.getElementById("stop");
  const regenBtn = document.getElementById("regen");
  let conversation = root.dataset.conversation || null;
  let ws = null;
  let backoff = 500;
  let current = null; // {id, seq, el, messageId}
  let lastReply = null;
  const KEY = "suite-chat-inflight";

  const setStatus = (text) => { statusEl.textContent = text || ""; };
  const uuid = () => (crypto.randomUUID ? crypto.randomUUID() :
    "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, (c) => {
      const r = (Math.random() * 16) | 0; return (c === "x" ? r : (r & 0x3) | 0x8).toString(16); }));

  function bubble(role, text, extra) {
    const el = document.createElement("div");
    el.className = "msg " + role + (extra ? " " + extra : "");
    el.dataset.role = role;
    el.textContent = text;
    log.appendChild(el);
    log.scrollTop = log.scrollHeight;
    return el;
  }

  async function api(path) {
    const r = await fetch(config.api + path, { credentials: "same-origin" });
    if (!r.ok) throw new Error(r.status);
    return r.json();
  }

  async function loadConversations() {
    const list = document.getElementById("conversations");
    try {
      const page = await api("/conversations?limit=50");
      list.innerHTML = "";
      for (const c of page.items) {
        const li = document.createElement("li");
        const a = document.createElement("a");
        a.href = "/chat/c/" + c.id;
        a.textContent = c.title;
        if (c.id === conversation) a.setAttribute("aria-current", "page");
        li.appendChild(a);
        list.appendChild(li);
      }
    } catch (e) { /* the list is a convenience */ }
  }

  async function loadMessages() {
    if (!conversation) return;
    const msgs = await api("/conversations/" + conversation + "/messages");
    log.innerHTML = "";
    const saved = JSON.parse(localStorage.getItem(KEY) || "null");
    for (const m of msgs) {
      if (m.status === "streaming" && saved) continue; // the resume below fills it in
      const el = bubble(m.role, m.content, m.status === "error" ? "error" : "");
      if (m.role === "assistant") { lastReply = m.id; el.dataset.messageId = m.id; }
    }
    regenBtn.hidden = !lastReply;
  }

  function remember() {
    if (current) localStorage.setItem(KEY, JSON.stringify({ id: current.id, seq: current.seq, conversation }));
    else localStorage.removeItem(KEY);
  }

  function send(frame) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(frame)); }

  function onFrame(f) {
    if (f.type === "hello") {
      backoff = 500;
      setStatus("");
      const saved = JSON.parse(localStorage.getItem(KEY) || "null");
      if (saved && (!current || current.id === saved.id)) {
        if (!current) current = { id: saved.id, seq: 0, el: bubble("assistant", "") };
        current.el.textContent = "";
        send({ type: "resume", request_id: current.id, after_seq: 0 });
      }
      return;
    }
    if (f.type === "pong") return;
    if (!current || f.request_id !== current.id) {
      if (f.type === "error" && !f.request_id) setStatus(f.code + ": " + f.message);
      return;
    }
    if (typeof f.seq === "number") { if (f.seq <= current.seq) return; current.seq = f.seq; remember(); }
    switch (f.type) {
      case "ack":
        if (!conversation) {
          conversation = f.conversation_id;
          history.replaceState(null, "", "/chat/c/" + conversation);
          loadConversations();
        }
        current.messageId = f.message_id;
        current.el.dataset.messageId = f.message_id;
        break;
      case "status":
        setStatus(f.state === "queued" ? "queued" + (f.position ? " (" + f.position + ")" : "") :
          f.state === "retrying" ? "retrying…" : "generating…");
        break;
      case "reset": current.el.textContent = ""; break;
      case "delta": current.el.textContent += f.text; log.scrollTop = log.scrollHeight; break;
      case "done":
        setStatus(f.context_trimmed ? "Older messages were left out of the context (" + f.trimmed_messages + ")." :
          (f.finish_reason === "cancelled" ? "stopped" : ""));
        finish(f.message_id);
        break;
      case "error":
        current.el.classList.add("error");
        if (!current.el.textContent) current.el.textContent = f.message;
        setStatus(f.code + (f.retry_after ? " (retry in " + Math.ceil(f.retry_after) + " s)" : ""));
        finish(null);
        break;
    }
  }

  function finish(messageId) {
    if (messageId) lastReply = messageId;
    current = null;
    remember();
    stopBtn.hidden = true;
    regenBtn.hidden = !lastReply;
    document.getElementById("send").disabled = false;
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(proto + location.host + config.ws_path);
    ws.onmessage = (ev) => onFrame(JSON.parse(ev.data));
    ws.onclose = (ev) => {
      if (ev.code === 4401) { setStatus("Please log in again."); return; }
      setStatus("reconnecting…");
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }

  function start(frame, userText) {
    if (userText) bubble("user", userText);
    current = { id: frame.request_id, seq: 0, el: bubble("assistant", "") };
    remember();
    stopBtn.hidden = false;
    regenBtn.hidden = true;
    document.getElementById("send").disabled = true;
    send(frame);
  }

  document.getElementById("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const content = input.value.trim();
    if (!content || current) return;
    input.value = "";
    start({ type: "send", request_id: uuid(), conversation_id: conversation, content }, content);
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); document.getElementById("composer").requestSubmit(); }
  });
  stopBtn.addEventListener("click", () => { if (current) send({ type: "cancel", request_id: current.id }); });
  regenBtn.addEventListener("click", () => {
    if (!lastReply || current) return;
    start({ type: "regenerate", request_id: uuid(), conversation_id: conversation, message_id: lastReply }, null);
  });
  setInterval(() => send({ type: "ping", ts: Date.now() }), 25000);

  loadConversations();
  loadMessages().finally(connect);
})();
