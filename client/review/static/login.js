// ugafl review: the sign-in page (auth = "accounts"). The session cookie is set by the server.
"use strict";

const TOKEN = document.querySelector('meta[name="ugafl-token"]').content;

document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const message = document.getElementById("login-message");
  message.textContent = "";
  try {
    const res = await fetch("api/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: TOKEN, user: document.getElementById("login-user").value,
                             password: document.getElementById("login-password").value }),
    });
    const data = await res.json().catch(() => ({ error: `server answered ${res.status}` }));
    if (!res.ok) throw new Error(data.error || `server answered ${res.status}`);
    window.location.replace("./");
  } catch (err) {
    message.textContent = err.message === "Failed to fetch" ? "The review server cannot be reached." : err.message;
    document.body.dataset.state = "login-failed";
  }
});
