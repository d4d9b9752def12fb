#!/usr/bin/env python3
"""Medians per case and build from the --json files of run.sh: steps/s,
messages/s, p50/p99 µs, mean batch, and CPU µs per message (server runtime +
compute worker, from loadgen's /proc accounting: cores busy ÷ messages/s)."""
import glob, json, re, statistics as st, collections
rows = collections.defaultdict(list)
for f in sorted(glob.glob('*.json')):
    m = re.match(r'(.*)_(main|new|echo)_run(\d+)\.json', f)
    if not m: continue
    r = json.load(open(f))
    cpu = {c['group']: c['cores'] for c in r['thread_cpu']}
    rt = sum(v for k, v in cpu.items() if k.startswith('server runtime'))
    wk = sum(v for k, v in cpu.items() if k.startswith('server compute'))
    mps = r['messages_per_sec'] or 1
    rows[(m.group(1), m.group(2))].append(dict(
        steps=r['steps_per_sec'], msgs=r['messages_per_sec'], p50=r['latency']['p50_us'],
        p99=r['latency']['p99_us'], batch=(r['server_batches'] or {}).get('mean_batch', 0),
        rt_us=rt / mps * 1e6, wk_us=wk / mps * 1e6, run=int(m.group(3)), errors=r['errors']))
def med(xs, k): return st.median(x[k] for x in xs)
print('| case | build | runs | steps/s median (all) | p50 µs | p99 µs | mean batch | CPU µs/msg runtime + worker |')
print('|---|---|---|---|---|---|---|---|')
for (case, b), xs in sorted(rows.items()):
    xs.sort(key=lambda x: x['run'])
    allr = ', '.join(f"{x['steps']/1e3:.1f}k" for x in xs)
    print(f"| {case} | {b} | {len(xs)} | {med(xs,'steps')/1e3:.1f}k ({allr}) | {med(xs,'p50'):.0f} | {med(xs,'p99'):.0f} | "
          f"{med(xs,'batch'):.1f} | {med(xs,'rt_us'):.2f} + {med(xs,'wk_us'):.2f} = {st.median(x['rt_us']+x['wk_us'] for x in xs):.2f} |"
          + (f" errors {sum(x['errors'] for x in xs)}" if any(x['errors'] for x in xs) else ''))
print()
print('per-pair ratios new / main (same run number):')
cases = sorted({c for c, _ in rows})
for c in cases:
    a = {x['run']: x for x in rows.get((c, 'main'), [])}; b = {x['run']: x for x in rows.get((c, 'new'), [])}
    e = {x['run']: x for x in rows.get((c, 'echo'), [])}
    pr = [b[r]['steps'] / a[r]['steps'] for r in sorted(a) if r in b]
    p50 = [b[r]['p50'] / a[r]['p50'] for r in sorted(a) if r in b]
    cpu = [(b[r]['rt_us'] + b[r]['wk_us']) / (a[r]['rt_us'] + a[r]['wk_us']) for r in sorted(a) if r in b and a[r]['rt_us'] + a[r]['wk_us'] > 0]
    line = f"{c}: steps/s {', '.join(f'{x:.2f}' for x in pr)} (median {st.median(pr):.2f}); p50 {', '.join(f'{x:.2f}' for x in p50)}"
    if cpu: line += f"; CPU/msg {', '.join(f'{x:.2f}' for x in cpu)}"
    if e:
        for v, d in (('main', a), ('new', b)):
            mr = [d[r]['msgs'] / e[r]['msgs'] for r in sorted(e) if r in d]
            pe = [d[r]['p50'] / e[r]['p50'] for r in sorted(e) if r in d]
            line += f"; {v} vs echo: msgs {', '.join(f'{x:.0%}' for x in mr)}, p50 {', '.join(f'{x:.2f}x' for x in pe)}"
    print(line)
