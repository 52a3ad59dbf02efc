/* imgsound gallery: one card per sample (picture, spectrogram with a playhead, sound, prompts, seed, scores),
   grouped by prompt pair, sorted and filtered by score, paged, with favourites kept in localStorage and exported
   as favourites.json (a JSON list of sample ids).

   Data: window.IMGSOUND_GALLERY, assigned by data/samples.js (written by imgsound_core/gallery.py):
   {version, id, title, page_size, samples: [{id, key, label, image_prompt, audio_prompt, seed, clip_score,
   clap_score, duration_s, aspect, media: {image, spectrogram, audio, image_thumb, spectrogram_thumb}}]}.
   Media URLs are used as given (relative to this page, or a server's routes). No build step, no dependencies. */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const data = window.IMGSOUND_GALLERY;
  if (!data || !Array.isArray(data.samples)) {
    showMessage("The gallery's data (data/samples.js) could not be loaded: rebuild it with `imgsound gallery`.");
    return;
  }

  const samples = data.samples.map((sample, index) => Object.assign({ index: index, media: {} }, sample));
  const pageSize = Math.max(1, Math.floor(Number(data.page_size)) || 50);
  // Every file:// page shares one localStorage in Chromium: the gallery's id keeps galleries apart.
  const storageKey = "imgsound-gallery:" + data.id + ":favourites";
  const favourites = loadFavourites();
  const state = readHash();

  let view = []; // the samples that pass the filters, in display order
  let entries = []; // the cards of the current page: {sample, card, audio, playhead, time, play, fav, ...}
  let current = -1; // index into entries of the selected card
  let playing = null; // the entry whose audio is playing
  let frame = 0; // the pending requestAnimationFrame, 0 if none

  // ---- helpers -------------------------------------------------------------------------------------------------

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) Object.assign(node, props);
    for (const child of children || []) node.append(child);
    return node;
  }

  function showMessage(text) {
    const message = $("message");
    message.textContent = text;
    message.hidden = !text;
  }

  function formatTime(seconds) {
    return Number.isFinite(seconds) ? seconds.toFixed(1) : "–";
  }

  function formatScore(value) {
    return value === null || value === undefined ? "–" : value.toFixed(3);
  }

  function score(sample, metric) {
    const clip = typeof sample.clip_score === "number" ? sample.clip_score : null;
    const clap = typeof sample.clap_score === "number" ? sample.clap_score : null;
    if (metric === "clip") return clip;
    if (metric === "clap") return clap;
    if (metric === "sum") return clip !== null && clap !== null ? clip + clap : null;
    return null;
  }

  function pairKey(sample) {
    return sample.image_prompt + "\u0000" + sample.audio_prompt;
  }

  // ---- state in the URL (#sort=clip&page=3…): a reload or a shared link keeps the place -----------------------

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const pick = (name, allowed, fallback) => (allowed.includes(params.get(name)) ? params.get(name) : fallback);
    const min = params.get("min") === null ? NaN : Number(params.get("min"));
    return {
      sort: pick("sort", ["original", "clip", "clap", "sum"], "original"),
      minMetric: pick("metric", ["clip", "clap", "sum"], "clip"),
      minScore: Number.isFinite(min) ? min : null,
      group: params.get("group") !== "0",
      favouritesOnly: params.get("favourites") === "1",
      page: Math.max(0, (parseInt(params.get("page"), 10) || 1) - 1),
    };
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.sort !== "original") params.set("sort", state.sort);
    if (state.minScore !== null) {
      params.set("metric", state.minMetric);
      params.set("min", String(state.minScore));
    }
    if (!state.group) params.set("group", "0");
    if (state.favouritesOnly) params.set("favourites", "1");
    if (state.page > 0) params.set("page", String(state.page + 1));
    const hash = params.toString();
    try {
      history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
    } catch (error) {
      // Some browsers refuse history changes on file:// pages; the page works without them.
    }
  }

  // ---- favourites ----------------------------------------------------------------------------------------------

  function loadFavourites() {
    try {
      const stored = JSON.parse(localStorage.getItem(storageKey) || "[]");
      return new Set(Array.isArray(stored) ? stored.filter((id) => typeof id === "string") : []);
    } catch (error) {
      return new Set(); // storage disabled (some browsers on file://) or unreadable: start empty
    }
  }

  function saveFavourites() {
    try {
      localStorage.setItem(storageKey, JSON.stringify(Array.from(favourites)));
    } catch (error) {
      // No storage: favourites last for this visit, and the export still works.
    }
  }

  function favouriteIds() {
    const ids = [];
    const seen = new Set();
    for (const sample of samples) {
      if (favourites.has(sample.id) && !seen.has(sample.id)) {
        seen.add(sample.id);
        ids.push(sample.id);
      }
    }
    return ids;
  }

  function toggleFavourite(entry) {
    const id = entry.sample.id;
    if (favourites.has(id)) favourites.delete(id);
    else favourites.add(id);
    saveFavourites();
    for (const other of entries) if (other.sample.id === id) showFavourite(other);
    $("favourite-count").textContent = String(favouriteIds().length);
  }

  function showFavourite(entry) {
    const on = favourites.has(entry.sample.id);
    entry.fav.textContent = on ? "★" : "☆";
    entry.fav.setAttribute("aria-pressed", String(on));
    entry.card.classList.toggle("favourite", on);
  }

  function exportFavourites() {
    const blob = new Blob([JSON.stringify(favouriteIds(), null, 2) + "\n"], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: "favourites.json" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // ---- the view: filter, sort, group ---------------------------------------------------------------------------

  function computeView() {
    let list = samples;
    if (state.favouritesOnly) list = list.filter((sample) => favourites.has(sample.id));
    if (state.minScore !== null) {
      list = list.filter((sample) => {
        const value = score(sample, state.minMetric);
        return value !== null && value >= state.minScore;
      });
    }
    if (state.sort !== "original") {
      const metric = state.sort;
      // Best first; samples without the score last; ties keep the source's order.
      list = list.slice().sort((a, b) => {
        const x = score(a, metric);
        const y = score(b, metric);
        if (x === null || y === null) return (x === null) - (y === null) || a.index - b.index;
        return y - x || a.index - b.index;
      });
    }
    if (state.group) {
      // Groups in the order of their first (so, when sorted, best) sample; the sort holds inside each group.
      const groups = new Map();
      for (const sample of list) {
        const key = pairKey(sample);
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(sample);
      }
      list = [];
      for (const group of groups.values()) for (const sample of group) list.push(sample);
    }
    return list;
  }

  function pageCount() {
    return Math.max(1, Math.ceil(view.length / pageSize));
  }

  // ---- cards ---------------------------------------------------------------------------------------------------

  function placeholder(text) {
    return el("div", { className: "placeholder", textContent: text });
  }

  function thumbnail(src, alt, missing) {
    if (!src) return placeholder(missing);
    const img = document.createElement("img");
    img.loading = "lazy"; // before src: only pictures near the viewport are fetched
    img.decoding = "async";
    img.alt = alt;
    img.addEventListener("error", () => img.replaceWith(placeholder(missing)), { once: true });
    img.src = src;
    return img;
  }

  function groupHeading(sample, count) {
    return el("h2", { className: "group" }, [
      el("span", { className: "tag", textContent: "image" }),
      el("span", { className: "prompt", textContent: sample.image_prompt || "–" }),
      el("span", { className: "tag", textContent: "audio" }),
      el("span", { className: "prompt", textContent: sample.audio_prompt || "–" }),
      el("span", { className: "muted", textContent: count + (count === 1 ? " sample" : " samples") }),
    ]);
  }

  function makeCard(sample, position) {
    const aspect = sample.aspect > 0 ? String(sample.aspect) : "4";
    const picture = el("a", {
      className: "frame picture",
      href: sample.media.image || "#",
      target: "_blank",
      rel: "noopener",
      title: "open the full picture",
    });
    picture.style.aspectRatio = aspect;
    picture.append(thumbnail(sample.media.image_thumb, "picture", "picture missing"));

    const spectrogram = el("div", { className: "frame spectrogram", title: "click to seek" });
    spectrogram.style.aspectRatio = aspect;
    const playhead = el("div", { className: "playhead" });
    spectrogram.append(thumbnail(sample.media.spectrogram_thumb, "spectrogram", "spectrogram missing"), playhead);

    const play = el("button", { type: "button", className: "play", textContent: "▶", title: "play/pause (space)" });
    play.setAttribute("aria-label", "play");
    const time = el("span", { className: "time", textContent: "0.0 / " + formatTime(sample.duration_s) + " s" });
    const fav = el("button", { type: "button", className: "fav", title: "favourite (f)" });
    fav.setAttribute("aria-label", "favourite");
    const audio = el("audio", { preload: "none" }); // fetched on play only
    if (sample.media.audio) audio.src = sample.media.audio;

    const meta = el("dl", { className: "meta" }, [
      el("dt", { textContent: "image" }),
      el("dd", { className: "image-prompt", textContent: sample.image_prompt || "–" }),
      el("dt", { textContent: "audio" }),
      el("dd", { className: "audio-prompt", textContent: sample.audio_prompt || "–" }),
      el("dt", { textContent: "seed" }),
      el("dd", { className: "seed", textContent: sample.seed === null || sample.seed === undefined ? "–" : sample.seed }),
    ]);
    if (score(sample, "clip") !== null || score(sample, "clap") !== null) {
      meta.append(
        el("dt", { textContent: "scores" }),
        el("dd", {
          className: "scores",
          textContent: "CLIP " + formatScore(score(sample, "clip")) + " · CLAP " + formatScore(score(sample, "clap")),
        })
      );
    }
    const card = el("article", { className: "card", tabIndex: -1 }, [
      picture,
      spectrogram,
      el("div", { className: "controls" }, [play, time, fav]),
      meta,
      el("div", { className: "id muted", textContent: (sample.label ? sample.label + " · " : "") + sample.id }),
      audio,
    ]);
    card.dataset.id = sample.id;
    card.dataset.key = sample.key;

    const entry = { sample, card, audio, playhead, time, play, fav, position, pendingFraction: null, missing: false };
    showFavourite(entry);
    if (!sample.media.audio) markAudioMissing(entry);

    card.addEventListener("click", () => select(entry.position, false));
    play.addEventListener("click", (event) => {
      keepShortcuts(event, entry);
      select(entry.position, false);
      toggle(entry);
    });
    fav.addEventListener("click", (event) => {
      keepShortcuts(event, entry);
      toggleFavourite(entry);
    });
    spectrogram.addEventListener("click", (event) => {
      const box = spectrogram.getBoundingClientRect();
      select(entry.position, false);
      seek(entry, Math.min(1, Math.max(0, (event.clientX - box.left) / box.width)));
    });
    audio.addEventListener("play", () => {
      if (playing && playing !== entry) playing.audio.pause(); // one sound at a time
      playing = entry;
      play.textContent = "❚❚";
      play.setAttribute("aria-label", "pause");
      card.classList.add("playing");
      if (!frame) frame = requestAnimationFrame(animate);
    });
    const stopped = () => {
      if (playing === entry) playing = null;
      play.textContent = "▶";
      play.setAttribute("aria-label", "play");
      card.classList.remove("playing");
      updatePlayhead(entry);
    };
    audio.addEventListener("pause", stopped);
    audio.addEventListener("ended", stopped);
    audio.addEventListener("loadedmetadata", () => {
      if (entry.pendingFraction !== null && Number.isFinite(audio.duration)) {
        audio.currentTime = entry.pendingFraction * audio.duration;
        entry.pendingFraction = null;
      }
      updatePlayhead(entry);
    });
    audio.addEventListener("seeked", () => updatePlayhead(entry));
    audio.addEventListener("error", () => markAudioMissing(entry));
    return entry;
  }

  // A mouse click leaves focus on the button, where space would press it again: hand focus to the card so that
  // space keeps meaning play/pause. Keyboard presses (detail 0) keep their focus.
  function keepShortcuts(event, entry) {
    if (event.detail > 0) entry.card.focus({ preventScroll: true });
  }

  function markAudioMissing(entry) {
    entry.missing = true;
    entry.play.disabled = true;
    entry.play.textContent = "✕";
    entry.time.textContent = "audio missing";
    entry.time.classList.add("missing");
    entry.card.classList.add("no-audio");
  }

  // ---- playback ------------------------------------------------------------------------------------------------

  function duration(entry) {
    const value = entry.audio.duration;
    return Number.isFinite(value) && value > 0 ? value : entry.sample.duration_s;
  }

  function updatePlayhead(entry) {
    const total = duration(entry);
    const at = entry.pendingFraction !== null ? entry.pendingFraction * (total || 0) : entry.audio.currentTime;
    const fraction = total > 0 ? Math.min(1, Math.max(0, at / total)) : 0;
    entry.playhead.style.left = (100 * fraction).toFixed(3) + "%";
    entry.playhead.classList.toggle("visible", !entry.audio.paused || at > 0);
    if (!entry.missing) entry.time.textContent = formatTime(at) + " / " + formatTime(total) + " s";
  }

  function animate() {
    frame = 0;
    if (!playing) return;
    updatePlayhead(playing);
    frame = requestAnimationFrame(animate);
  }

  function toggle(entry) {
    if (entry.missing) return;
    if (!entry.audio.paused) {
      entry.audio.pause();
      return;
    }
    const started = entry.audio.play();
    if (started) {
      started.catch(() => {
        // Rejected: a failed load (the error event marks the card) or a pause before it started (nothing to do).
        if (entry.audio.error) markAudioMissing(entry);
      });
    }
  }

  function seek(entry, fraction) {
    const audio = entry.audio;
    if (entry.missing) return;
    if (audio.readyState >= HTMLMediaElement.HAVE_METADATA && Number.isFinite(audio.duration)) {
      entry.pendingFraction = null;
      audio.currentTime = fraction * audio.duration;
    } else {
      // preload="none": nothing is known yet. Fetch the metadata; the seek happens on loadedmetadata.
      entry.pendingFraction = fraction;
      if (audio.networkState !== HTMLMediaElement.NETWORK_LOADING) {
        audio.preload = "metadata";
        audio.load();
      }
    }
    updatePlayhead(entry);
  }

  function stopAll() {
    if (playing) playing.audio.pause();
    playing = null;
  }

  // ---- selection and keys --------------------------------------------------------------------------------------

  function select(position, scroll) {
    if (position < 0 || position >= entries.length) return;
    if (entries[current]) entries[current].card.classList.remove("current");
    current = position;
    const entry = entries[current];
    entry.card.classList.add("current");
    if (scroll) {
      entry.card.focus({ preventScroll: true });
      entry.card.scrollIntoView({ block: "nearest" });
    }
  }

  function move(step) {
    const wasPlaying = playing !== null;
    let target = current < 0 ? 0 : current + step;
    if (target < 0 || target >= entries.length) {
      const page = state.page + (target < 0 ? -1 : 1);
      if (page < 0 || page >= pageCount()) return;
      state.page = page;
      render();
      target = step < 0 ? entries.length - 1 : 0;
    } else if (wasPlaying) {
      playing.audio.pause();
    }
    select(target, true);
    if (wasPlaying) toggle(entries[target]); // listening through: the next one plays on
  }

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
    const target = event.target instanceof Element ? event.target : null;
    // Typing into a field or choosing in a list keeps its keys (Escape leaves it); a focused button or checkbox
    // keeps space.
    if (target && target.closest("select, textarea, input:not([type=checkbox])")) {
      if (event.key === "Escape") target.blur();
      return;
    }
    const activates = target && target.closest("button, a, input");
    switch (event.key) {
      case " ":
        if (activates) return;
        event.preventDefault();
        if (current < 0) select(0, true);
        if (entries[current]) toggle(entries[current]);
        break;
      case "ArrowRight":
      case "ArrowDown":
        event.preventDefault();
        move(1);
        break;
      case "ArrowLeft":
      case "ArrowUp":
        event.preventDefault();
        move(-1);
        break;
      case "f":
      case "F":
        if (entries[current]) toggleFavourite(entries[current]);
        break;
      default:
        return;
    }
  });

  // ---- rendering -----------------------------------------------------------------------------------------------

  function render() {
    stopAll();
    view = computeView();
    state.page = Math.min(state.page, pageCount() - 1);
    const start = state.page * pageSize;
    const slice = view.slice(start, start + pageSize);
    const counts = new Map();
    if (state.group) for (const sample of view) counts.set(pairKey(sample), (counts.get(pairKey(sample)) || 0) + 1);

    const fragment = document.createDocumentFragment();
    entries = [];
    current = -1;
    let group = null;
    for (const sample of slice) {
      if (state.group && pairKey(sample) !== group) {
        group = pairKey(sample);
        fragment.append(groupHeading(sample, counts.get(group)));
      }
      const entry = makeCard(sample, entries.length);
      entries.push(entry);
      fragment.append(entry.card);
    }
    $("cards").replaceChildren(fragment);

    const shown = view.length === samples.length ? "" : view.length + " of ";
    $("count").textContent = shown + samples.length + (samples.length === 1 ? " sample" : " samples");
    $("page-info").textContent = "page " + (state.page + 1) + " / " + pageCount();
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pageCount() - 1;
    $("favourite-count").textContent = String(favouriteIds().length);
    showMessage(view.length ? "" : "No sample matches these filters.");
    writeHash();
  }

  function goToPage(page) {
    state.page = page;
    render();
    window.scrollTo(0, 0);
  }

  function controls() {
    const sort = $("sort");
    const metric = $("min-metric");
    const minimum = $("min-score");
    const group = $("group");
    const onlyFavourites = $("favourites-only");
    sort.value = state.sort;
    metric.value = state.minMetric;
    minimum.value = state.minScore === null ? "" : String(state.minScore);
    group.checked = state.group;
    onlyFavourites.checked = state.favouritesOnly;
    const rerender = () => {
      state.page = 0;
      render();
    };
    sort.addEventListener("change", () => {
      state.sort = sort.value;
      rerender();
    });
    metric.addEventListener("change", () => {
      state.minMetric = metric.value;
      rerender();
    });
    minimum.addEventListener("input", () => {
      const text = minimum.value.trim();
      const value = text === "" ? NaN : Number(text);
      state.minScore = Number.isFinite(value) ? value : null;
      rerender();
    });
    group.addEventListener("change", () => {
      state.group = group.checked;
      rerender();
    });
    onlyFavourites.addEventListener("change", () => {
      state.favouritesOnly = onlyFavourites.checked;
      rerender();
    });
    $("prev").addEventListener("click", () => goToPage(state.page - 1));
    $("next").addEventListener("click", () => goToPage(state.page + 1));
    $("export").addEventListener("click", exportFavourites);
    // A mouse click leaves focus on a checkbox or button, where space would toggle it: give space back.
    for (const node of [group, onlyFavourites, $("prev"), $("next"), $("export")]) {
      node.addEventListener("click", (event) => {
        if (event.detail > 0) node.blur();
      });
    }
  }

  document.title = data.title || document.title;
  $("title").textContent = data.title || "imgsound gallery";
  controls();
  render();
  // For benchmarks and tests: when the first page's cards were in the document (ms since navigation start).
  window.imgsoundGallery = { firstRenderMs: performance.now(), pageSize: pageSize };
})();
