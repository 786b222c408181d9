// The web page used as a person would, in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core): node page.mjs URL IMAGE SCREENSHOT. Prints one JSON object of what it saw;
// tests/integration/test_page.py starts the server and judges it.
import { chromium } from "playwright-core";

const [url, imagePath, screenshot] = process.argv.slice(2);
const METHODS = ["saliency", "grad_cam", "occlusion"];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const out = { requests: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on("request", (r) => out.requests.push(r.url()));
  page.setDefaultTimeout(120_000);
  await page.goto(url);
  await page.waitForSelector("#model option[value=shapes]", { state: "attached" });
  await page.selectOption("#model", "shapes");
  await page.waitForSelector("#methods input[value=grad_cam]");
  await page.setInputFiles("#upload", imagePath);
  await page.waitForSelector("#preview:not([hidden])");
  for (const box of await page.$$("#methods input")) await box.setChecked(METHODS.includes(await box.getAttribute("value")));
  await page.check("#metrics input[value=deletion]");
  await page.click("#run");
  await page.waitForFunction((n) => document.querySelectorAll("#results .card.done, #results .card.failed").length === n,
    METHODS.length);
  out.cards = await page.$$eval("#results .card", (cards) => cards.map((card) => {
    const img = card.querySelector(".heatmap");
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const g = canvas.getContext("2d");
    g.drawImage(img, 0, 0);
    const pixels = canvas.width ? g.getImageData(0, 0, canvas.width, canvas.height).data : [];
    const colours = new Set();
    let opaque = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      colours.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
      if (pixels[i + 3] > 0) opaque++;
    }
    return {
      method: card.dataset.method,
      done: card.classList.contains("done"),
      error: card.querySelector(".card-error").hidden ? "" : card.querySelector(".card-error").textContent,
      width: canvas.width, height: canvas.height, colours: colours.size, opaque,
      progress: Number(card.querySelector("progress").value),
      top: [...card.querySelectorAll(".top li")].map((li) => li.textContent),
      evaluation: [...card.querySelectorAll(".evaluation tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
      png: card.querySelector(".png").getAttribute("href") || "",
      raw: !card.querySelector(".raw").hidden,
    };
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
  // A bad upload: the server's message is shown.
  await page.setInputFiles("#upload", { name: "bad.png", mimeType: "image/png", buffer: Buffer.from("this is not a png") });
  await page.click("#run");
  await page.waitForSelector("#error:not([hidden])");
  await page.waitForFunction(() => !document.querySelector("#run").disabled);
  out.badUploadError = await page.textContent("#error");
  // A tabular row, edited by hand, explained by two methods: bar charts.
  await page.selectOption("#model", "tabular");
  await page.waitForSelector("#methods input[value=tree_shap]");
  await page.fill("#row", "13.2, 2.1, 2.4, 19, 100, 2.3, 2, 0.4, 1.6, 5, 1, 2.6, 750");
  for (const box of await page.$$("#methods input")) await box.setChecked(["tree_shap", "occlusion"].includes(await box.getAttribute("value")));
  await page.click("#run");
  await page.waitForFunction(() => document.querySelectorAll("#results .card.done, #results .card.failed").length === 2);
  out.tabular = await page.$$eval("#results .card", (cards) => cards.map((card) => {
    const canvas = card.querySelector(".bars");
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0;
    for (let i = 0; i < pixels.length; i += 4) if (pixels[i] !== pixels[i + 2]) coloured++;  // red or blue bars
    return { method: card.dataset.method, done: card.classList.contains("done"), coloured, error: card.querySelector(".card-error").textContent,
             top: [...card.querySelectorAll(".top li")].map((li) => li.textContent) };
  }));
} catch (error) {
  out.failure = String(error && error.stack || error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
