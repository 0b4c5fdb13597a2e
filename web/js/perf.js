// Main-thread cost of the live picture, for bench/console.py and for anyone profiling the console:
// the time spent applying each batch of unit positions and drawing the map after it. Bounded
// rings on window.__icpPerf; a sample costs two performance.now() calls.

const KEEP = 20000;
const perf = (window.__icpPerf = { batches: [], handlers: [], draws: [], pending: null });

function keep(list, ms) {
  list.push(ms);
  if (list.length > KEEP) list.splice(0, list.length - KEEP);
}

// A positions batch was applied in `ms`; the next draw completes its cost.
export function positionsApplied(ms) {
  keep(perf.handlers, ms);
  perf.pending = (perf.pending ?? 0) + ms;
}

export function drawn(ms) {
  keep(perf.draws, ms);
  if (perf.pending !== null) {
    keep(perf.batches, perf.pending + ms);
    perf.pending = null;
  }
}
