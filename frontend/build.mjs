// Builds the reader page's viewer (src/viewer.js, src/viewer.css) into the Python package:
// dicom_node/api/static/viewer/. setup.py runs `npm ci && npm run build` when the output is
// missing or older than the sources; the output is generated, so git ignores it.
import { build } from "esbuild";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = join(here, "..", "dicom_node", "api", "static", "viewer");
mkdirSync(outdir, { recursive: true });

const result = await build({
  entryPoints: [join(here, "src", "viewer.js"), join(here, "src", "viewer.css")],
  outdir,
  bundle: true,
  minify: true,
  format: "iife",
  target: ["chrome110", "firefox110", "safari16"],
  legalComments: "linked",
  metafile: true,
  alias: { xmlbuilder2: join(here, "src", "shims", "xmlbuilder2.js") },
  logLevel: "warning",
});
const sizes = Object.entries(result.metafile.outputs)
  .map(([file, output]) => `${file.split("/").pop()} ${(output.bytes / 1024).toFixed(0)} KiB`);
console.log(`viewer built into ${outdir}: ${sizes.join(", ")}`);
