// Runs MicroPython code in steps on the official MicroPython WebAssembly port and reports the
// heap after each step. Driven by firmware/host/heap/__init__.py; see its docstring for what
// the figures mean.
//
// Input (JSON on stdin):
//   {"heapsize": bytes, "files": {"/abs/path": "<base64>", ...}, "path": ["/dir", ...],
//    "prelude": "code run before anything is measured",
//    "steps": [{"name": "...", "code": "..."}, ...]}
// Output (JSON on stdout): {"steps": [{"name", "end", "live", "out"}], "error": null | "..."}
//   end:  gc.mem_alloc() as the step's last statement (nothing collected during the step)
//   live: gc.mem_alloc() after the step, once the collector has run at the top level
//
// Why steps: this port collects garbage only when control is back at the top level (its
// collector cannot see references held in WebAssembly locals, so gc.collect() inside Python
// code just asks for a collection when the current call into the interpreter returns). Each
// step is one such call, so the collection after it is real and exact.

import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

async function readStdin() {
    const chunks = [];
    for await (const chunk of process.stdin) {
        chunks.push(chunk);
    }
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

function writeFiles(fs, files) {
    for (const [path, data] of Object.entries(files)) {
        const dir = path.slice(0, path.lastIndexOf("/"));
        if (dir) {
            fs.mkdirTree(dir);
        }
        fs.writeFile(path, Buffer.from(data, "base64"));
    }
}

const job = await readStdin();
let out = [];
const mp = await loadMicroPython({
    heapsize: job.heapsize,
    stdout: (line) => out.push(line),
    stderr: (line) => out.push(line),
});
writeFiles(mp.FS, job.files);
// The prelude runs before anything is measured (the board's own modules, which a real board has
// in ROM). The name the meter itself assigns exists from here on, so no step grows a dictionary
// for it.
try {
    mp.runPython(
        "import gc, sys\n" +
            job.path.map((p) => `sys.path.insert(0, ${JSON.stringify(p)})\n`).join("") +
            "_meter_end = 0\n" +
            (job.prelude || ""),
    );
} catch (err) {
    process.stdout.write(JSON.stringify({ steps: [], error: `prelude: ${err.message || err}\n${out.join("\n")}` }) + "\n");
    process.exit(0);
}
const memAlloc = mp.pyimport("gc").mem_alloc;

function collectAndMeasure() {
    // gc.collect() here only asks for a collection; it runs as this call returns to the top.
    mp.runPython("gc.collect()");
    return memAlloc();
}

const report = { steps: [], error: null, baseline: collectAndMeasure() };
for (const step of job.steps) {
    out = [];
    try {
        mp.runPython(step.code + "\n_meter_end = gc.mem_alloc()\n");
    } catch (err) {
        report.error = `${step.name}: ${err.message || err}\n${out.join("\n")}`;
        break;
    }
    const end = mp.globals.get("_meter_end");
    report.steps.push({ name: step.name, end, live: collectAndMeasure(), out });
}
process.stdout.write(JSON.stringify(report) + "\n");
