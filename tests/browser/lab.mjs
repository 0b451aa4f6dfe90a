// Open a notebook in JupyterLab in headless Chromium, run all its cells, move the time slider of the first
// reconstruction panel and check that the plot changed. Prints one JSON line with what it saw.
// Usage: node lab.mjs <lab base url> <token> <notebook path> <screenshot dir>
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const [base, token, notebook, outDir] = process.argv.slice(2);
const result = { console_errors: [], page_errors: [], steps: [] };
const step = (s) => { result.steps.push(`${new Date().toISOString().slice(11, 19)} ${s}`); };
fs.mkdirSync(outDir, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Flags of the machine notes: no sandbox as root, and no background networking (the network is closed here).
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.on('console', (m) => { if (m.type() === 'error') result.console_errors.push(m.text()); });
page.on('pageerror', (e) => result.page_errors.push(String(e)));

async function imageSources(panel) {
  return panel.evaluate((el) => Array.from(el.querySelectorAll('.js-plotly-plot image')).map((i) => i.getAttribute('href') || ''));
}

try {
  await page.goto(`${base}/lab/tree/${notebook}?reset&token=${token}`);
  await page.waitForSelector('.jp-NotebookPanel .jp-Cell', { timeout: 120000 });
  await page.waitForFunction(() => window.jupyterapp && window.jupyterapp.shell.currentWidget
                               && window.jupyterapp.shell.currentWidget.sessionContext?.session?.kernel, null, { timeout: 120000 });
  step('notebook open, kernel started');
  // run-all resolves when the run ends (false when a cell failed); the counts come from the notebook model, not
  // the DOM, because JupyterLab renders only the cells in view.
  result.run_ok = await page.evaluate(() => window.jupyterapp.commands.execute('notebook:run-all-cells'));
  const counts = await page.evaluate(() => Array.from(window.jupyterapp.shell.currentWidget.content.model.cells)
    .filter((c) => c.type === 'code').map((c) => c.executionCount));
  result.code_cells = counts.length;
  result.executed_cells = counts.filter((n) => n !== null && n !== undefined).length;
  step(`run all: ${result.run_ok}, ${result.executed_cells} of ${result.code_cells} code cells ran`);
  result.errors_in_outputs = await page.evaluate(() => Array.from(window.jupyterapp.shell.currentWidget.content.model.cells)
    .filter((c) => c.type === 'code').flatMap((c) => c.outputs.toJSON())
    .filter((o) => o.output_type === 'error').map((o) => `${o.ename}: ${o.evalue}`));

  // Every plot of the notebook (static figures and panels) must have been drawn with its traces.
  await page.waitForTimeout(3000);
  result.plot_traces = await page.evaluate(() => Array.from(document.querySelectorAll('.js-plotly-plot')).map((p) => (p.data || []).length));

  const panel = page.locator('.unilearn-reconstruction').first();
  await panel.scrollIntoViewIfNeeded();
  await page.waitForFunction(() => {
    const p = document.querySelector('.unilearn-reconstruction');
    return p && p.querySelectorAll('.js-plotly-plot image').length >= 3;
  }, null, { timeout: 60000 });
  const before = await imageSources(panel);
  const readout = panel.locator('.unilearn-time-slider .widget-readout');
  result.frame_before = (await readout.textContent()).trim();
  await panel.screenshot({ path: path.join(outDir, 'reconstruction_before.png') });
  // Move the time slider as a user would: focus its handle and press the right arrow key twice.
  const handle = panel.locator('.unilearn-time-slider .noUi-handle').first();
  await handle.click();
  await handle.press('ArrowRight');
  await handle.press('ArrowRight');
  step('slider moved');
  let after = before;
  for (let i = 0; i < 60 && after.join() === before.join(); i++) { await page.waitForTimeout(500); after = await imageSources(panel); }
  result.frame_after = (await readout.textContent()).trim();
  result.images = before.length;
  result.changed = after.length === before.length && after.join() !== before.join();
  result.changed_images = after.filter((s, i) => s !== before[i]).length;
  await panel.screenshot({ path: path.join(outDir, 'reconstruction_after.png') });
  await page.screenshot({ path: path.join(outDir, 'jupyterlab.png') });

  // Click a cell of the first recall panel's confusion matrix (row 1, column 2: true class 1 predicted as class 2)
  // where a user would, on plotly's drag layer, and wait for the clips behind it to be listed.
  const recall = page.locator('.unilearn-recall').first();
  await recall.scrollIntoViewIfNeeded();
  const cm = recall.locator('.js-plotly-plot').nth(1);
  const n = await cm.evaluate((el) => el.data[0].z.length);
  const box = await cm.locator('.nsewdrag').first().boundingBox();
  await page.mouse.click(box.x + (2 + 0.5) * box.width / n, box.y + (1 + 0.5) * box.height / n);
  await page.waitForFunction(() => document.querySelector('.unilearn-recall select')?.options.length > 0, null, { timeout: 30000 })
    .catch(() => {});
  result.clicked_cell = await recall.evaluate((el) => ({
    text: el.querySelector('.widget-html-content')?.textContent || '',
    clips: Array.from(el.querySelector('select')?.options || []).map((o) => o.textContent),
    image: !!el.querySelector('img[src^="blob:"], img[src^="data:"]'),
  }));
  await recall.screenshot({ path: path.join(outDir, 'recall_clicked.png') });
  for (const name of ['gates', 'relations']) {
    const p = page.locator(`.unilearn-${name}`).first();
    await p.scrollIntoViewIfNeeded();
    await p.screenshot({ path: path.join(outDir, `${name}.png`) });
  }
  step('all screenshots saved');
  step('screenshots saved');
} catch (e) {
  result.failure = String(e);
  try { await page.screenshot({ path: path.join(outDir, 'failure.png') }); } catch {}
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
