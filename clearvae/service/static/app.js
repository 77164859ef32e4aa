// The clearvae web page: each view is a thin form over one endpoint of the service (app.py);
// nothing here decides anything about images or models that the API does not.
//
//   form --FormData--> POST api/<task>[?async=1] --202--> poll api/jobs/{id} (progress,
//        Cancel = DELETE) --> {data: JSON numbers and base64 files, blob: a PNG} --> the view
//
// Every failure ends in the view's error line (the server's {error} text, or what the browser
// said), never in silence.

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);

// --- the server: token, requests, jobs --------------------------------------------------------

const TOKEN_KEY = 'clearvae-token';
const tokenInput = $('token');
tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || '';

/** An error to show: the server's message, or the page's own about the form. */
class Problem extends Error {
  constructor(message, status = 0, detail = null) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}
class Cancelled extends Error {}

function authorization() {
  const token = tokenInput.value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** fetch with the token; a non-2xx answer becomes a Problem with the server's message. */
async function call(path, init = {}) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: { ...authorization(), ...init.headers } });
  } catch (err) {
    throw new Problem(`Could not reach the server (${err.message}): is clearvae serve running?`);
  }
  if (!response.ok) throw await problemOf(response);
  return response;
}

async function problemOf(response) {
  let message = `The server answered ${response.status} ${response.statusText}`;
  let detail = null;
  try {
    const body = await response.json();
    if (body && body.error) ({ error: message, detail } = body);
  } catch { /* not JSON: keep the status line */ }
  if (response.status === 401) message += '\n(Enter the token at the top of the page.)';
  return new Problem(message, response.status, detail);
}

function b64blob(text, type) {
  const bin = atob(text);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type });
}

/** One view's requests: its progress bar, Cancel button and error line. */
class Task {
  constructor(name, onBusy = () => {}) {
    this.box = $(`${name}-job`);
    this.bar = $(`${name}-progress`);
    this.message = $(`${name}-job-message`);
    this.cancelButton = $(`${name}-cancel`);
    this.error = $(`${name}-error`);
    this.onBusy = onBusy;
    this.busy = false;
    this.job = null;
    this.cancelButton.addEventListener('click', () => this.cancel());
  }

  /** Run a view's handler; whatever it throws is shown in the view. */
  async run(handler) {
    this.showError(null);
    try {
      await handler();
    } catch (err) {
      this.showError(err);
      if (!(err instanceof Problem || err instanceof Cancelled)) console.error(err);
    }
  }

  /** POST a form; with ``asynchronous`` as a job, followed to its end. Returns
   * {data, blob}: the JSON answer, or the PNG answer as a Blob (data then empty). */
  async post(path, form, asynchronous, label) {
    this.begin(label);
    try {
      const response = await call(path + (asynchronous ? '?async=1' : ''),
                                  { method: 'POST', body: form });
      if (response.status === 202) return await this.follow((await response.json()).job);
      if ((response.headers.get('content-type') || '').startsWith('image/')) {
        return { data: {}, blob: await response.blob() };
      }
      return { data: await response.json(), blob: null };
    } finally {
      this.end();
    }
  }

  async follow(job) {
    this.job = job;
    this.cancelButton.disabled = false;
    for (let wait = 100; ; wait = Math.min(wait * 1.5, 1000)) {
      const status = await (await call(`api/jobs/${job}`)).json();
      this.bar.value = status.progress;
      this.message.textContent = status.message;
      if (status.state === 'done') {
        call(`api/jobs/${job}`, { method: 'DELETE' }).catch(() => {}); // free it on the server
        const { png, ...data } = status.result;
        return { data, blob: png ? b64blob(png, 'image/png') : null };
      }
      if (status.state === 'failed') {
        throw new Problem(status.error?.error ?? 'The job failed.', 0, status.error?.detail);
      }
      if (status.state === 'cancelled') throw new Cancelled('Cancelled.');
      await sleep(wait);
    }
  }

  async cancel() {
    if (!this.job) return;
    this.cancelButton.disabled = true;
    this.message.textContent = 'cancelling…';
    try {
      await call(`api/jobs/${this.job}`, { method: 'DELETE' });
    } catch (err) {
      this.showError(err);
    }
  }

  begin(label) {
    this.busy = true;
    this.box.hidden = false;
    this.bar.removeAttribute('value'); // indeterminate until a job reports
    this.message.textContent = label;
    this.cancelButton.disabled = true; // until there is a job to cancel
    this.onBusy(true);
  }

  end() {
    this.busy = false;
    this.job = null;
    this.box.hidden = true;
    this.onBusy(false);
  }

  showError(err) {
    this.error.hidden = !err;
    this.error.textContent = err ? err.message : '';
    this.error.classList.toggle('cancelled', err instanceof Cancelled);
  }
}

// --- small helpers ----------------------------------------------------------------------------

const fmt = {
  bytes: (n) => `${n.toLocaleString('en-US')} bytes`,
  bpp: (v) => v.toFixed(3),
  db: (v) => (v == null ? '∞ (identical)' : `${v.toFixed(2)} dB`),
  quality: (q) => String(Number(q.toFixed(4))),
};

/** Show ``text`` in ``el`` and keep the exact value beside it (data-value) for scripts. */
function show(el, value, text) {
  el.dataset.value = value == null ? '' : String(value);
  el.textContent = text;
}

const shown = new WeakMap(); // img -> its object URL, revoked when replaced

/** Show a Blob (or File) in an <img>; resolves once the browser has decoded it. */
async function showBlob(img, blob) {
  if (shown.has(img)) URL.revokeObjectURL(shown.get(img));
  const url = URL.createObjectURL(blob);
  shown.set(img, url);
  img.src = url;
  try {
    await img.decode();
  } catch {
    throw new Problem('The browser could not show this image.');
  }
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement('a'), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

const stem = (file) => (file?.name || 'image').replace(/\.[^.]*$/, '') || 'image';

function number(input, what) {
  const value = input.value.trim();
  if (!value || !input.checkValidity()) {
    const range = input.min && input.max ? ` (${input.min} to ${input.max})` : '';
    throw new Problem(`Give ${what} as a number${range}.`);
  }
  return value;
}

function bindOutput(input, output, format = (v) => v) {
  const update = () => { output.value = format(Number(input.value)); };
  input.addEventListener('input', update);
  update();
}

// --- tabs, drop zones, models -----------------------------------------------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];

function selectView(view, focus = false) {
  if (!tabs.some((t) => t.dataset.view === view)) view = 'compress';
  for (const tab of tabs) {
    const on = tab.dataset.view === view;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(tab.getAttribute('aria-controls')).hidden = !on;
    if (on && focus) tab.focus();
  }
  if (location.hash !== `#${view}`) history.replaceState(null, '', `#${view}`);
}

tabs.forEach((tab, i) => {
  tab.addEventListener('click', () => selectView(tab.dataset.view));
  tab.addEventListener('keydown', (e) => {
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    selectView(tabs[(to + tabs.length) % tabs.length].dataset.view, true);
  });
});
window.addEventListener('hashchange', () => selectView(location.hash.slice(1)));

for (const zone of document.querySelectorAll('[data-drop]')) {
  const input = $(zone.dataset.drop);
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('dragging'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('dragging');
    if (!e.dataTransfer.files.length) return;
    input.files = e.dataTransfer.files;
    input.dispatchEvent(new Event('change', { bubbles: true }));
  });
}
// a file dropped beside a drop zone must not replace the page
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => e.preventDefault());

function globalError(err) {
  const box = $('global-error');
  box.hidden = !err;
  box.textContent = err ? err.message : '';
}

function describe(model) {
  const parts = [model.kind, model.channels === 1 ? 'gray' : 'colour'];
  if (model.bundled) parts.push('bundled');
  if (model.bytes) parts.push(`${(model.bytes / 2 ** 20).toFixed(1)} MB`);
  return `${model.name} (${parts.join(', ')})`;
}

/** Fill every <select data-task> with the models that can do its task. */
async function loadModels() {
  let models;
  try {
    models = (await (await call('api/models')).json()).models;
  } catch (err) {
    globalError(err);
    return;
  }
  globalError(null);
  for (const select of document.querySelectorAll('select[data-task]')) {
    const keep = select.value;
    [...select.options].filter((o) => o.value).forEach((o) => o.remove()); // not "default"
    for (const model of models.filter((m) => m.tasks.includes(select.dataset.task))) {
      select.add(new Option(describe(model), model.name));
    }
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }
  generate.update();
}

async function loadHealth() {
  const status = $('server-status');
  try {
    const health = await (await call('health')).json();
    const workers = `${health.workers} worker${health.workers === 1 ? '' : 's'}`;
    status.textContent = `clearvae ${health.version} · ${workers}`;
  } catch {
    status.textContent = 'server unreachable';
  }
}

tokenInput.addEventListener('change', () => {
  sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
  loadModels();
});

// --- the split viewer: decoded over original, a draggable divider, zoom and pan ---------------

class SplitViewer {
  constructor(root, slider, zoomLabel) {
    Object.assign(this, { root, slider, zoomLabel, w: 0, h: 0, z: 1, x: 0, y: 0, split: 0.5 });
    this.stage = root.querySelector('.stage');
    this.over = root.querySelector('.over'); // the decoded image
    this.divider = root.querySelector('.divider');
    this.fitted = true;
    this.mode = null; // 'split' or 'pan' while a pointer drags
    root.addEventListener('wheel', (e) => {
      if (!this.w) return;
      e.preventDefault();
      const p = this.point(e);
      this.zoomAt(Math.exp(-e.deltaY * 0.0015), p.x, p.y);
    }, { passive: false });
    root.addEventListener('pointerdown', (e) => this.down(e));
    root.addEventListener('pointermove', (e) => this.move(e));
    root.addEventListener('pointerup', () => this.up());
    root.addEventListener('pointercancel', () => this.up());
    root.addEventListener('dblclick', () => this.fit());
    root.addEventListener('keydown', (e) => this.key(e));
    slider.addEventListener('input', () => { this.split = slider.value / 100; this.render(); });
    new ResizeObserver(() => (this.fitted ? this.fit() : this.render())).observe(root);
  }

  /** Show images of w x h pixels (both <img> already hold them), fitted to the viewer. */
  load(w, h) {
    Object.assign(this, { w, h });
    this.root.style.aspectRatio = `${w} / ${h}`;
    Object.assign(this.stage.style, { width: `${w}px`, height: `${h}px` });
    this.fit();
  }

  get width() { return this.root.clientWidth; }
  get height() { return this.root.clientHeight; }

  point(e) {
    const r = this.root.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }

  fit() {
    if (!this.w || !this.width || !this.height) return;
    this.z = Math.min(this.width / this.w, this.height / this.h);
    this.x = (this.width - this.w * this.z) / 2;
    this.y = (this.height - this.h * this.z) / 2;
    this.fitted = true;
    this.render();
  }

  zoomAt(factor, cx = this.width / 2, cy = this.height / 2) {
    if (!this.w) return;
    const z = clamp(this.z * factor, 0.02, 64);
    this.x = cx - ((cx - this.x) * z) / this.z;
    this.y = cy - ((cy - this.y) * z) / this.z;
    this.z = z;
    this.fitted = false;
    this.render();
  }

  down(e) {
    if (!this.w || e.button > 0) return;
    const p = this.point(e);
    this.mode = Math.abs(p.x - this.split * this.width) < 18 ? 'split' : 'pan';
    this.last = p;
    this.root.setPointerCapture(e.pointerId);
    this.root.classList.toggle('panning', this.mode === 'pan');
    e.preventDefault();
  }

  move(e) {
    if (!this.mode) return;
    const p = this.point(e);
    if (this.mode === 'split') {
      this.split = clamp(p.x / this.width, 0, 1);
    } else {
      this.x += p.x - this.last.x;
      this.y += p.y - this.last.y;
      this.fitted = false;
    }
    this.last = p;
    this.render();
  }

  up() {
    this.mode = null;
    this.root.classList.remove('panning');
  }

  key(e) {
    const actions = {
      ArrowLeft: () => { this.split = clamp(this.split - 0.02, 0, 1); },
      ArrowRight: () => { this.split = clamp(this.split + 0.02, 0, 1); },
      '+': () => this.zoomAt(1.25), '=': () => this.zoomAt(1.25), '-': () => this.zoomAt(0.8),
      0: () => this.fit(), 1: () => this.zoomAt(1 / this.z),
    };
    if (!(e.key in actions)) return;
    e.preventDefault();
    actions[e.key]();
    this.render();
  }

  render() {
    this.stage.style.transform = `translate(${this.x}px, ${this.y}px) scale(${this.z})`;
    this.stage.classList.toggle('pixelated', this.z > 1.001);
    const sx = this.split * this.width;
    this.divider.style.left = `${sx - 1}px`;
    const cut = clamp((sx - this.x) / this.z, 0, this.w); // in image pixels
    this.over.style.clipPath = `inset(0 0 0 ${cut}px)`;
    this.slider.value = String(this.split * 100);
    this.zoomLabel.value = `${Math.round(this.z * 100)}%`;
  }
}

// --- Compress ---------------------------------------------------------------------------------

const compress = {
  file: null,
  result: null, // {data, cvae: Blob, png: Blob, name}
  task: new Task('compress', () => compress.update()),
  viewer: new SplitViewer($('compress-viewer'), $('compress-split'), $('compress-zoom-level')),
  update() { $('compress-run').disabled = !compress.file || compress.task.busy; },
};
const TARGETS = {
  target_bpp: { what: 'the bits per pixel', placeholder: 'e.g. 0.5', step: 'any' },
  max_bytes: { what: 'the most bytes', placeholder: 'e.g. 20000', step: '1' },
  target_psnr: { what: 'the PSNR in dB', placeholder: 'e.g. 32', step: 'any' },
  max_error: { what: 'the largest error K (16-bit gray images)', placeholder: '0: lossless',
               step: '1' },
};

bindOutput($('compress-quality'), $('compress-quality-value'), fmt.quality);
bindOutput($('compress-effort'), $('compress-effort-value'));
$('compress-file').addEventListener('change', (e) => {
  compress.file = e.target.files[0] || null;
  compress.update();
});
$('compress-target-kind').addEventListener('change', (e) => {
  const target = TARGETS[e.target.value];
  const input = $('compress-target');
  input.disabled = !target;
  $('compress-quality').disabled = Boolean(target);
  if (target) Object.assign(input, { placeholder: target.placeholder, step: target.step });
});
$('compress-form').addEventListener('submit', (e) => {
  e.preventDefault();
  compress.task.run(runCompress);
});
$('compress-zoom-in').addEventListener('click', () => compress.viewer.zoomAt(1.25));
$('compress-zoom-out').addEventListener('click', () => compress.viewer.zoomAt(0.8));
$('compress-zoom-fit').addEventListener('click', () => compress.viewer.fit());
$('compress-zoom-1').addEventListener('click', () => compress.viewer.zoomAt(1 / compress.viewer.z));
$('compress-download-cvae').addEventListener('click', () => {
  download(compress.result.cvae, `${compress.result.name}.cvae`);
});
$('compress-download-png').addEventListener('click', () => {
  download(compress.result.png, `${compress.result.name}_decoded.png`);
});

async function runCompress() {
  const file = compress.file;
  if (!file) throw new Problem('Choose an image first.');
  const form = new FormData();
  form.append('image', file);
  const model = $('compress-model').value;
  if (model) form.append('model', model);
  const kind = $('compress-target-kind').value;
  if (kind) form.append(kind, number($('compress-target'), TARGETS[kind].what));
  else form.append('quality', $('compress-quality').value);
  const effort = Number($('compress-effort').value);
  form.append('effort', String(effort));
  const dropAlpha = $('compress-drop-alpha').checked;
  if (dropAlpha) form.append('drop_alpha', 'true');
  // effort > 0 refines, a target bisects: both take long enough to show progress
  const { data } = await compress.task.post('api/compress', form, effort > 0 || Boolean(kind),
                                            'compressing…');
  await showCompressed(file, data);
  await runCompare(file, data, dropAlpha);
}

async function showCompressed(file, data) {
  const result = {
    data, name: stem(file),
    cvae: b64blob(data.cvae, 'application/octet-stream'),
    png: b64blob(data.decoded, 'image/png'),
  };
  compress.result = result;
  await Promise.all([showBlob($('compress-original'), file),
                     showBlob($('compress-decoded'), result.png)]);
  $('compress-results').hidden = false;
  $('compress-hint').hidden = true;
  compress.viewer.load(data.width, data.height);
  show($('compress-bytes'), data.bytes, fmt.bytes(data.bytes));
  show($('compress-bpp'), data.bpp, fmt.bpp(data.bpp));
  show($('compress-psnr'), data.psnr, fmt.db(data.psnr));
  show($('compress-quality-used'), data.quality,
       `${fmt.quality(data.quality)}, effort ${data.effort}`);
  const colour = data.channels === 1 ? `gray, ${data.bits} bits` : 'colour';
  $('compress-size').textContent = `${data.width} × ${data.height}, ${colour}; ` +
    `${(file.size / data.bytes).toFixed(1)}× smaller than the upload (${fmt.bytes(file.size)})`;
  fillRow($('compare-cvae'), { quality: data.quality, bytes: data.bytes, bpp: data.bpp,
                               psnr: data.psnr, reached: true }, null);
  for (const id of ['compare-jpeg', 'compare-webp']) {
    for (const cell of $(id).querySelectorAll('td')) show(cell, null, '…');
  }
}

async function runCompare(file, data, dropAlpha) {
  const status = $('compare-status');
  const skip = (why) => {
    status.textContent = why;
    for (const id of ['compare-jpeg', 'compare-webp']) {
      for (const cell of $(id).querySelectorAll('td')) show(cell, null, '–');
    }
  };
  if (data.psnr == null || data.psnr >= 100) return skip('The decoded image is identical: no PSNR to match.');
  if (data.bits !== 8) return skip('JPEG and WebP are compared on 8-bit images only.');
  status.textContent = 'Finding what JPEG and WebP need for the same PSNR…';
  const form = new FormData();
  form.append('image', file);
  form.append('psnr', String(data.psnr));
  if (dropAlpha) form.append('drop_alpha', 'true');
  try {
    const { data: found } = await compress.task.post('api/compare', form, true,
                                                     'JPEG and WebP at the same PSNR…');
    fillRow($('compare-jpeg'), found.jpeg, data.bytes);
    fillRow($('compare-webp'), found.webp, data.bytes);
    status.textContent = `The smallest JPEG and WebP files (Pillow) that reach ` +
      `${fmt.db(data.psnr)} on this image.`;
  } catch (err) {
    skip('');
    throw err;
  }
}

function fillRow(row, found, cvaeBytes) {
  const cell = (field) => row.querySelector(`[data-field="${field}"]`);
  const q = row.id === 'compare-cvae' ? fmt.quality(found.quality) : String(found.quality);
  show(cell('quality'), found.quality, found.reached ? q : `${q} (best)`);
  show(cell('bytes'), found.bytes, found.bytes.toLocaleString('en-US'));
  show(cell('bpp'), found.bpp, fmt.bpp(found.bpp));
  show(cell('psnr'), found.psnr, fmt.db(found.psnr));
  const ratio = cell('ratio');
  if (!ratio) return;
  if (!found.reached) {
    show(ratio, null, 'never reaches it');
  } else {
    const more = (found.bytes / cvaeBytes - 1) * 100;
    show(ratio, found.bytes / cvaeBytes,
         `${more >= 0 ? '+' : '−'}${Math.abs(more).toFixed(0)} % bytes`);
  }
}

// --- Decompress -------------------------------------------------------------------------------

const decompress = { task: new Task('decompress'), result: null };

$('decompress-file').addEventListener('change', (e) => decompress.task.run(async () => {
  const file = e.target.files[0];
  if (!file) return;
  $('decompress-results').hidden = true;
  const form = new FormData();
  form.append('file', file);
  const { blob } = await decompress.task.post('api/decompress', form, false, 'decoding…');
  const img = $('decompress-result');
  await showBlob(img, blob);
  decompress.result = { blob, name: stem(file) };
  const { naturalWidth: w, naturalHeight: h } = img;
  $('decompress-info').textContent = `${w} × ${h} pixels from ${fmt.bytes(file.size)} ` +
    `(${fmt.bpp((8 * file.size) / (w * h))} bpp)`;
  $('decompress-results').hidden = false;
}));
$('decompress-download').addEventListener('click', () => {
  download(decompress.result.blob, `${decompress.result.name}.png`);
});

// --- Denoise ----------------------------------------------------------------------------------

const denoise = {
  file: null,
  result: null,
  task: new Task('denoise', () => denoise.update()),
  update() { $('denoise-run').disabled = !denoise.file || denoise.task.busy; },
};

$('denoise-file').addEventListener('change', (e) => {
  denoise.file = e.target.files[0] || null;
  denoise.update();
});
for (const radio of document.querySelectorAll('[name="denoise-sigma-mode"]')) {
  radio.addEventListener('change', () => { $('denoise-sigma').disabled = !$('denoise-set').checked; });
}
$('denoise-form').addEventListener('submit', (e) => {
  e.preventDefault();
  denoise.task.run(runDenoise);
});
$('denoise-download').addEventListener('click', () => {
  download(denoise.result.blob, `${denoise.result.name}_denoised.png`);
});

async function runDenoise() {
  const file = denoise.file;
  const form = new FormData();
  form.append('image', file);
  const model = $('denoise-model').value;
  if (model) form.append('model', model);
  form.append('samples', number($('denoise-samples'), 'the number of draws'));
  form.append('keep', number($('denoise-keep'), 'the number of samples to show'));
  if ($('denoise-set').checked) form.append('sigma', number($('denoise-sigma'), 'the noise level'));
  const { data } = await denoise.task.post('api/denoise', form, true, 'denoising…');
  const blob = b64blob(data.denoised, 'image/png');
  denoise.result = { blob, name: stem(file) };
  await Promise.all([showBlob($('denoise-input'), file), showBlob($('denoise-result'), blob),
                     showBlob($('denoise-std'), b64blob(data.std, 'image/png'))]);
  const list = $('denoise-sample-list');
  list.replaceChildren();
  for (const [i, png] of data.sample_images.entries()) {
    const img = Object.assign(document.createElement('img'), { alt: `posterior sample ${i + 1}` });
    const figure = document.createElement('figure');
    const caption = Object.assign(document.createElement('figcaption'),
                                  { textContent: `sample ${i + 1}` });
    figure.append(img, caption);
    list.append(figure);
    await showBlob(img, b64blob(png, 'image/png'));
  }
  show($('denoise-sigma-used'), data.sigma, `Noise level ${data.sigma.toFixed(2)} ` +
       `(${data.sigma_given ? 'as given' : 'estimated from the image'}); ` +
       `${data.samples} posterior draws.`);
  $('denoise-results').hidden = false;
}

// --- Inpaint: paint the mask over the image ---------------------------------------------------

const inpaint = {
  file: null,
  result: null,
  drawing: false,
  last: null,
  task: new Task('inpaint', () => inpaint.update()),
  update() {
    $('inpaint-run').disabled = !inpaint.file || inpaint.task.busy;
    $('inpaint-clear').disabled = !inpaint.file;
  },
};
const picture = $('inpaint-canvas');
const mask = $('inpaint-mask'); // painted pixels: alpha 255, the rest transparent
const maskContext = mask.getContext('2d', { willReadFrequently: true });

bindOutput($('inpaint-brush'), $('inpaint-brush-value'));
$('inpaint-file').addEventListener('change', (e) => inpaint.task.run(async () => {
  const file = e.target.files[0] || null;
  inpaint.file = null;
  inpaint.update();
  if (!file) return;
  const img = new Image();
  await showBlob(img, file);
  for (const canvas of [picture, mask]) {
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
  }
  picture.getContext('2d').drawImage(img, 0, 0);
  maskContext.clearRect(0, 0, mask.width, mask.height);
  inpaint.file = file;
  $('inpaint-paint').hidden = false;
  $('inpaint-hint').hidden = true;
  $('inpaint-results').hidden = true;
  sizePaint();
  inpaint.update();
}));

/** The painting (and its result) at least 384 px wide, small images enlarged; at most the
 * column. */
function sizePaint() {
  if (!inpaint.file) return;
  const room = $('inpaint-paint').parentElement.clientWidth;
  const width = `${Math.min(room, Math.max(mask.width, 384))}px`;
  $('inpaint-paint').style.width = width;
  $('inpaint-result').style.width = width;
}
new ResizeObserver(sizePaint).observe($('inpaint-paint').parentElement);

function maskPoint(e) {
  const r = mask.getBoundingClientRect();
  const scale = mask.width / r.width; // image pixels per CSS pixel
  return { x: (e.clientX - r.left) * scale, y: (e.clientY - r.top) * scale,
           radius: (Number($('inpaint-brush').value) / 2) * scale };
}

function paint(from, to) {
  maskContext.fillStyle = maskContext.strokeStyle = '#ff2a2a';
  maskContext.lineCap = 'round';
  maskContext.lineWidth = 2 * to.radius;
  maskContext.beginPath();
  maskContext.moveTo(from.x, from.y);
  maskContext.lineTo(to.x, to.y);
  maskContext.stroke();
  maskContext.beginPath();
  maskContext.arc(to.x, to.y, to.radius, 0, 2 * Math.PI);
  maskContext.fill();
}

mask.addEventListener('pointerdown', (e) => {
  if (!inpaint.file || e.button > 0) return;
  mask.setPointerCapture(e.pointerId);
  inpaint.drawing = true;
  inpaint.last = maskPoint(e);
  paint(inpaint.last, inpaint.last);
  e.preventDefault();
});
mask.addEventListener('pointermove', (e) => {
  if (!inpaint.drawing) return;
  for (const event of e.getCoalescedEvents?.() ?? [e]) {
    const p = maskPoint(event);
    paint(inpaint.last, p);
    inpaint.last = p;
  }
});
for (const end of ['pointerup', 'pointercancel']) {
  mask.addEventListener(end, () => { inpaint.drawing = false; });
}
$('inpaint-clear').addEventListener('click', () => {
  maskContext.clearRect(0, 0, mask.width, mask.height);
});

/** The mask as the API takes it: a PNG of the image's size, white where to fill. The painted
 * canvas is made binary first (no soft brush edge), so what is shown is what is sent. */
async function maskPNG() {
  const { width: w, height: h } = mask;
  const painted = maskContext.getImageData(0, 0, w, h);
  const out = new ImageData(w, h);
  let count = 0;
  for (let i = 0; i < w * h; i++) {
    const on = painted.data[4 * i + 3] >= 128;
    count += on;
    painted.data.set(on ? [255, 42, 42, 255] : [0, 0, 0, 0], 4 * i);
    out.data.set(on ? [255, 255, 255, 255] : [0, 0, 0, 255], 4 * i);
  }
  maskContext.putImageData(painted, 0, 0);
  const canvas = Object.assign(document.createElement('canvas'), { width: w, height: h });
  canvas.getContext('2d').putImageData(out, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  return { blob, count };
}

$('inpaint-form').addEventListener('submit', (e) => {
  e.preventDefault();
  inpaint.task.run(async () => {
    const { blob: holes, count } = await maskPNG();
    if (!count) throw new Problem('Paint over the pixels to fill first.');
    const form = new FormData();
    form.append('image', inpaint.file);
    form.append('mask', holes, 'mask.png');
    const model = $('inpaint-model').value;
    if (model) form.append('model', model);
    form.append('iterations', number($('inpaint-iterations'), 'the iterations'));
    const { blob } = await inpaint.task.post('api/inpaint', form, true, 'inpainting…');
    inpaint.result = { blob, name: stem(inpaint.file) };
    await showBlob($('inpaint-result'), blob);
    $('inpaint-results').hidden = false;
  });
});
$('inpaint-download').addEventListener('click', () => {
  download(inpaint.result.blob, `${inpaint.result.name}_inpainted.png`);
});

// --- Generate: samples and interpolations from a VAE ------------------------------------------

const generate = {
  result: null,
  task: new Task('generate', () => generate.update()),
  update() {
    const model = Boolean($('generate-model').value);
    $('generate-none').hidden = $('generate-model').options.length > 0;
    $('generate-sample').disabled = !model || generate.task.busy;
    $('generate-interpolate').disabled = !model || generate.task.busy ||
      !$('generate-a').files.length || !$('generate-b').files.length;
  },
};

bindOutput($('generate-temperature'), $('generate-temperature-value'), (v) => v.toFixed(2));
for (const id of ['generate-model', 'generate-a', 'generate-b']) {
  $(id).addEventListener('change', () => generate.update());
}
$('generate-seed-random').addEventListener('click', () => {
  $('generate-seed').value = String(Math.floor(Math.random() * 2 ** 31));
});

async function showGenerated(blob, name, caption) {
  generate.result = { blob, name };
  await showBlob($('generate-image'), blob);
  $('generate-image').alt = caption;
  $('generate-caption').textContent = caption;
  $('generate-results').hidden = false;
}

$('sample-form').addEventListener('submit', (e) => {
  e.preventDefault();
  generate.task.run(async () => {
    const form = new FormData();
    const model = $('generate-model').value;
    const n = number($('generate-n'), 'how many samples');
    const seed = number($('generate-seed'), 'the seed');
    const temperature = $('generate-temperature').value;
    for (const [k, v] of Object.entries({ model, n, temperature, seed })) form.append(k, v);
    const { blob } = await generate.task.post('api/sample', form, true, 'sampling…');
    await showGenerated(blob, `${model}_samples_seed${seed}.png`,
                        `${n} samples of ${model} at temperature ${Number(temperature).toFixed(2)}, seed ${seed}`);
  });
});
$('interpolate-form').addEventListener('submit', (e) => {
  e.preventDefault();
  generate.task.run(async () => {
    const form = new FormData();
    const model = $('generate-model').value;
    const steps = number($('generate-steps'), 'the steps');
    form.append('model', model);
    form.append('a', $('generate-a').files[0]);
    form.append('b', $('generate-b').files[0]);
    form.append('steps', steps);
    const { blob } = await generate.task.post('api/interpolate', form, true, 'interpolating…');
    await showGenerated(blob, `${model}_interpolation.png`,
                        `From A to B through the latent space of ${model}, ${steps} steps`);
  });
});
$('generate-download').addEventListener('click', () => {
  download(generate.result.blob, generate.result.name);
});

// --- start ------------------------------------------------------------------------------------

selectView(location.hash.slice(1) || 'compress');
compress.update();
denoise.update();
inpaint.update();
Promise.all([loadHealth(), loadModels()]).finally(() => { document.body.dataset.ready = 'true'; });
