/* imgsound playground: submits a job (POST v1/jobs), follows it on its event stream, shows each sample's picture,
   spectrogram with a playhead, sound, downloads and parameters.

   The API key (kept in localStorage) travels in the Authorization header only, never in a URL: the event stream is
   read with fetch() and a stream reader (EventSource cannot send headers), and the job's files are fetched the same
   way and shown from blob: URLs. URLs are relative to the page, so the page works under any route prefix. No build
   step, no dependencies. */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "imgsound-playground:api-key";
  const OUTPUTS = ["image", "spectrogram", "audio", "record"];
  const FILES = {
    image: ["picture", "image.png"],
    spectrogram: ["spectrogram", "spectrogram.png"],
    audio: ["sound", "audio.wav"],
    record: ["sample.json", "sample.json"],
  };
  const INIT_FIELDS = ["init_image", "init_audio", "strength"];

  let job = null; // {id, abort: AbortController, ended: bool}
  let blobUrls = []; // of the results shown: revoked when new ones replace them
  let players = []; // {audio, playhead, time, button}
  let frame = 0;

  // ---- helpers ---------------------------------------------------------------------------------------------------

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) Object.assign(node, props);
    for (const child of children || []) node.append(child);
    return node;
  }

  function showMessage(text) {
    $("message").textContent = text || "";
    $("message").hidden = !text;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function apiKey() {
    return $("api-key").value.trim();
  }

  function headers(extra) {
    const all = Object.assign({}, extra || {});
    if (apiKey()) all.Authorization = "Bearer " + apiKey();
    return all;
  }

  async function detail(response) {
    try {
      const body = await response.json();
      if (typeof body.message === "string" && body.message) return body.message;
      if (typeof body.detail === "string") return body.detail;
      return JSON.stringify(body.detail);
    } catch (error) {
      return response.statusText || "HTTP " + response.status;
    }
  }

  function formatTime(seconds) {
    return Number.isFinite(seconds) ? seconds.toFixed(1) + " s" : "–";
  }

  // ---- the API key -----------------------------------------------------------------------------------------------

  function loadKey() {
    try {
      $("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
    } catch (error) {
      // No storage (some privacy settings): the key lasts for this visit.
    }
  }

  function saveKey() {
    try {
      if (apiKey()) localStorage.setItem(KEY_STORAGE, apiKey());
      else localStorage.removeItem(KEY_STORAGE);
    } catch (error) {
      // As above.
    }
  }

  // ---- starting from a picture or a sound: only when the server takes it -----------------------------------------

  function initOff() {
    $("init-fields").hidden = true;
    $("init-off").hidden = false;
    for (const id of ["init-image", "init-audio", "strength"]) $(id).disabled = true;
  }

  async function checkInitSupport() {
    try {
      const response = await fetch("openapi.json");
      if (!response.ok) return; // no schema to read: the server's 422 will tell
      const spec = await response.json();
      const content = spec.paths["/v1/jobs"].post.requestBody.content["application/json"];
      const properties = (content.schema && content.schema.properties) || {};
      if (!INIT_FIELDS.every((name) => name in properties)) initOff();
    } catch (error) {
      // As above.
    }
  }

  function refusedInitFields(body) {
    // A 422 for unknown fields, naming one of ours: this server does not take sources yet.
    const problems = Array.isArray(body && body.detail) ? body.detail : [];
    return problems.some(
      (p) => p.type === "extra_forbidden" && Array.isArray(p.loc) && INIT_FIELDS.includes(p.loc[p.loc.length - 1])
    );
  }

  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  // ---- the request -----------------------------------------------------------------------------------------------

  function integer(id) {
    return Math.round(Number($(id).value));
  }

  async function requestBody() {
    const body = {
      image_prompt: $("image-prompt").value,
      audio_prompt: $("audio-prompt").value,
      image_negative: $("image-negative").value,
      audio_negative: $("audio-negative").value,
      steps: integer("steps"),
      seed: integer("seed"),
      num_samples: integer("num-samples"),
      height: integer("height"),
      width: integer("width"),
      outputs: OUTPUTS,
    };
    const picture = $("init-image").disabled ? null : $("init-image").files[0];
    const sound = $("init-audio").disabled ? null : $("init-audio").files[0];
    if (picture) body.init_image = await readBase64(picture);
    if (sound) body.init_audio = await readBase64(sound);
    if (picture || sound) body.strength = Number($("strength").value);
    return body;
  }

  async function submit(event) {
    event.preventDefault();
    if (!$("form").reportValidity()) return;
    saveKey();
    showMessage("");
    stopJob();
    clearResults();
    let body;
    try {
      body = await requestBody();
    } catch (error) {
      showMessage("The starting file could not be read: " + error);
      return;
    }
    $("submit").disabled = true;
    let response;
    try {
      response = await fetch("v1/jobs", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(body),
      });
    } catch (error) {
      $("submit").disabled = false;
      showMessage("The server could not be reached: " + error);
      return;
    }
    if (response.status !== 202) {
      $("submit").disabled = false;
      let answer = null;
      try {
        answer = await response.clone().json();
      } catch (error) {
        answer = null;
      }
      if (response.status === 422 && refusedInitFields(answer)) {
        initOff();
        showMessage("This server does not take a starting picture or sound yet: the fields are off now. Submit again.");
        return;
      }
      const why = await detail(response);
      const retry = response.headers.get("Retry-After");
      const hints = {
        401: "An API key is needed (or this one is not valid): ",
        413: "The request is too large (a smaller starting file?): ",
        429: "Too many samples for now: ",
        503: "The service is busy: ",
      };
      showMessage((hints[response.status] || "") + why + (retry ? " (retry in " + retry + " s)" : ""));
      return;
    }
    const submitted = await response.json();
    follow(submitted.job_id, body);
  }

  // ---- following a job -------------------------------------------------------------------------------------------

  function showProgress(state) {
    const total = state.progress.steps_total;
    const done = state.progress.steps_done;
    const bar = $("progress");
    bar.max = Math.max(1, total);
    bar.value = Math.min(done, bar.max);
    const percent = total ? Math.floor((100 * done) / total) : 0;
    $("progress-label").textContent = percent + " %" + (total ? " · " + done + " / " + total + " steps" : "");
    const words = {
      queued: "Queued: waiting for a free slot…",
      running: "Running…",
      succeeded: "Done.",
      failed: "Failed: " + (state.error || "unknown reason"),
      cancelled: "Cancelled.",
    };
    setStatus(words[state.status] || state.status);
  }

  function follow(jobId, body) {
    const abort = new AbortController();
    job = { id: jobId, abort: abort, ended: false, body: body };
    $("job").hidden = false;
    $("hint").hidden = true;
    $("job-title").textContent = "Job " + jobId.slice(0, 8) + "…";
    $("cancel").disabled = false;
    showProgress({ status: "queued", progress: { steps_done: 0, steps_total: 0 } });
    streamEvents(job).catch(() => null).then(() => {
      if (!job || job.id !== jobId || job.ended) return;
      pollStatus(job); // the stream ended early (time limit, network): poll instead
    });
  }

  async function streamEvents(current) {
    const response = await fetch("v1/jobs/" + current.id + "/events", {
      headers: headers({ Accept: "text/event-stream" }),
      signal: current.abort.signal,
      cache: "no-store",
    });
    if (!response.ok || !response.body) return;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // a keep-alive comment
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trim());
        }
        if (!data.length) continue;
        const state = JSON.parse(data.join("\n"));
        if (name === "progress") showProgress(state);
        else if (name === "end") return ended(current, state);
      }
    }
  }

  async function pollStatus(current) {
    while (job === current && !current.ended) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      if (job !== current) return;
      try {
        const response = await fetch("v1/jobs/" + current.id, { headers: headers(), signal: current.abort.signal });
        if (!response.ok) {
          showMessage("The job's status could not be read: " + (await detail(response)));
          return;
        }
        const state = await response.json();
        showProgress(state);
        if (["succeeded", "failed", "cancelled"].includes(state.status)) return ended(current, state);
      } catch (error) {
        if (current.abort.signal.aborted) return;
      }
    }
  }

  async function ended(current, state) {
    current.ended = true;
    showProgress(state);
    $("cancel").disabled = true;
    $("submit").disabled = false;
    if (state.status === "succeeded") await showResults(current, state);
  }

  function stopJob() {
    if (job) job.abort.abort();
    job = null;
    $("cancel").disabled = true;
  }

  async function cancel() {
    if (!job || job.ended) return;
    $("cancel").disabled = true;
    setStatus("Cancelling…");
    const response = await fetch("v1/jobs/" + job.id, { method: "DELETE", headers: headers() });
    if (!response.ok) showMessage("The job could not be cancelled: " + (await detail(response)));
  }

  // ---- results ---------------------------------------------------------------------------------------------------

  function clearResults() {
    for (const player of players) player.audio.pause();
    for (const url of blobUrls) URL.revokeObjectURL(url);
    blobUrls = [];
    players = [];
    $("results").replaceChildren();
  }

  async function file(jobId, index, output) {
    const response = await fetch("v1/jobs/" + jobId + "/samples/" + index + "/" + output, { headers: headers() });
    if (!response.ok) throw new Error(output + ": " + (await detail(response)));
    const url = URL.createObjectURL(await response.blob());
    blobUrls.push(url);
    return url;
  }

  function parameters(body, sample) {
    // What reproduces this one sample through POST /v1/generate (a starting file is named, not copied).
    const copy = Object.assign({}, body, { seed: sample.seed, num_samples: 1 });
    delete copy.init_image;
    delete copy.init_audio;
    for (const name of ["init_image_sha256", "init_audio_sha256"]) {
      if (sample.parameters && sample.parameters[name]) copy[name] = sample.parameters[name];
    }
    return JSON.stringify(copy, null, 2);
  }

  async function showResults(current, state) {
    const results = $("results");
    for (const sample of state.samples) {
      const index = sample.index;
      const urls = {};
      try {
        for (const output of OUTPUTS) if (sample.uris[output]) urls[output] = await file(current.id, index, output);
      } catch (error) {
        showMessage("A file of sample " + index + " could not be fetched: " + error.message);
        continue;
      }
      if (job !== current) return; // another job was started meanwhile
      const label = "sample " + (index + 1) + " (seed " + sample.seed + ")";
      const picture = el("figure", {}, [
        el("img", { src: urls.image, alt: "picture of " + label + ": " + current.body.image_prompt }),
        el("figcaption", { textContent: "picture" }),
      ]);
      const playhead = el("div", { className: "playhead" });
      const spectrogram = el("div", { className: "spectrogram", title: "click to seek" }, [
        el("img", { src: urls.spectrogram, alt: "spectrogram of " + label + ": " + current.body.audio_prompt }),
        playhead,
      ]);
      const audio = el("audio", { src: urls.audio, preload: "auto" });
      const button = el("button", { type: "button", className: "play", textContent: "▶ Play" });
      button.setAttribute("aria-label", "play " + label);
      const time = el("span", { className: "time", textContent: "0.0 s" });
      const downloads = el("span", { className: "downloads" }, ["Download: "]);
      for (const output of OUTPUTS) {
        if (!urls[output]) continue;
        const [text, name] = FILES[output];
        downloads.append(el("a", { href: urls[output], download: sample.sample_id + "-" + name, textContent: text }), " ");
      }
      const json = parameters(current.body, sample);
      const pre = el("pre", { textContent: json });
      const copy = el("button", { type: "button", textContent: "Copy parameters" });
      copy.addEventListener("click", () => copyText(json, pre, copy));
      const card = el("article", { className: "result" }, [
        el("h3", {}, [label[0].toUpperCase() + label.slice(1) + " ", el("code", { textContent: sample.sample_id })]),
        picture,
        el("figure", {}, [spectrogram, el("figcaption", { textContent: "spectrogram: click to seek" })]),
        el("div", { className: "controls" }, [button, time, audio, downloads]),
        el("div", { className: "parameters" }, [copy, pre]),
      ]);
      card.dataset.sampleId = sample.sample_id;
      const player = { audio, playhead, time, button };
      players.push(player);
      button.addEventListener("click", () => toggle(player));
      audio.addEventListener("play", () => {
        for (const other of players) if (other !== player) other.audio.pause();
        button.textContent = "❚❚ Pause";
        button.setAttribute("aria-label", "pause " + label);
        animate();
      });
      audio.addEventListener("pause", () => {
        button.textContent = "▶ Play";
        button.setAttribute("aria-label", "play " + label);
        draw(player);
      });
      audio.addEventListener("ended", () => draw(player));
      audio.addEventListener("loadedmetadata", () => draw(player));
      spectrogram.addEventListener("click", (event) => {
        const box = spectrogram.getBoundingClientRect();
        const fraction = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
        if (Number.isFinite(audio.duration)) audio.currentTime = fraction * audio.duration;
        draw(player);
      });
      results.append(card);
    }
  }

  function toggle(player) {
    if (player.audio.paused) player.audio.play().catch((error) => showMessage("The sound could not play: " + error));
    else player.audio.pause();
  }

  function draw(player) {
    const duration = player.audio.duration;
    const at = player.audio.currentTime;
    const fraction = Number.isFinite(duration) && duration > 0 ? Math.min(1, at / duration) : 0;
    player.playhead.style.left = (100 * fraction).toFixed(3) + "%";
    player.playhead.classList.toggle("visible", !player.audio.paused || at > 0);
    player.time.textContent = formatTime(at) + " / " + formatTime(duration);
  }

  function animate() {
    frame = 0;
    let playing = false;
    for (const player of players) {
      draw(player);
      playing = playing || !player.audio.paused;
    }
    if (playing) frame = requestAnimationFrame(animate);
  }

  async function copyText(text, pre, button) {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (error) {
      // No clipboard access (an insecure origin): select the text for the user to copy.
      const range = document.createRange();
      range.selectNodeContents(pre);
      const selection = getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => (button.textContent = "Copy parameters"), 2000);
  }

  // ---- start -----------------------------------------------------------------------------------------------------

  loadKey();
  checkInitSupport();
  $("form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("api-key").addEventListener("change", saveKey);
  $("forget-key").addEventListener("click", () => {
    $("api-key").value = "";
    saveKey();
  });
})();
