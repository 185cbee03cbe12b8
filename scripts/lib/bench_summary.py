"""The bench's one-screen summary, and the comparison of two of them.

  bench_summary.py summary RESULTS.jsonl QUICK SUMMARY.json
      prints the summary of one run (each figure, its target, met or not)
      and writes the same rows as JSON
  bench_summary.py compare A.json B.json
      prints two summaries side by side, with B's change against A

Every row is optional: a run without some phase (--delivery, no
--webhooks) has no row for it. A target reads "met" only if its run also
had no failed request, no lost and no duplicated mail.
"""

import datetime
import json
import os
import sys


def rows_of(r):
    """(name, shown value, main number, target text, met or None) per row."""
    rows = []

    def add(name, value, number=None, target="", met=None):
        rows.append({"name": name, "value": value, "number": number,
                     "target": target, "met": met})

    def clean_wrk(d):
        return d["non_2xx"] == 0 and d["socket_errors"] == 0 and d["timeouts"] == 0

    if "accept" in r and "ceiling" in r:
        acc, ceil = r["accept"], r["ceiling"]
        add("accept, empty tables",
            f'{acc["accepted_per_s"]:.0f} req/s, p50 {acc["p50_ms"]:.2f} ms, p99 {acc["p99_ms"]:.2f} ms, non-2xx {acc["non_2xx"]}',
            acc["accepted_per_s"])
        add("ceiling (pgbench, 1 INSERT/tx)", f'{ceil["tps"]:.0f} tps', ceil["tps"])
        add("accept ÷ ceiling", f'{acc["ratio_to_ceiling"]:.2f}, p99 {acc["p99_ms"]:.2f} ms',
            acc["ratio_to_ceiling"], "≥ 1.0 and p99 ≤ 10 ms",
            acc["ratio_to_ceiling"] >= 1.0 and acc["p99_ms"] <= 10 and clean_wrk(acc))
    if "accept_info_log" in r:
        i = r["accept_info_log"]
        add("accept, RUST_LOG=info (a line per request)",
            f'{i["accepted_per_s"]:.0f} req/s, p99 {i["p99_ms"]:.2f} ms = {i["ratio_to_warn_only"]:.2f} of the run above',
            i["accepted_per_s"])
    if "sink_capacity" in r:
        cap = r["sink_capacity"]
        add("sink capacity (lettre, NODELAY)",
            f'{cap["sink_capacity_per_s"]:.0f} mails/s over {cap["conns"]} conns',
            cap["sink_capacity_per_s"])
    if "end_to_end" in r:
        e = r["end_to_end"]
        add("end-to-end",
            f'{e["deliveries_per_s"]:.0f}/s ({e["accepted"]} in {e["elapsed_s"]:.1f} s), lost {e["lost"]}, dup {e["duplicates"]}',
            e["deliveries_per_s"])
        add("end-to-end ÷ sink capacity", f'{e["ratio_to_sink_capacity"]:.2f}',
            e["ratio_to_sink_capacity"], "≥ 0.5, 0 lost, 0 dup",
            e["ratio_to_sink_capacity"] >= 0.5 and e["lost"] == 0 and e["duplicates"] == 0
            and e["accepted"] == e["posted"] and e["errors"] == 0 and e["complete"])
    relays = sorted((d for k, d in r.items() if k.startswith("relay_")), key=lambda d: d["workers"])
    for d in relays:
        add(f'relay {d["data_delay_ms"]} ms, {d["workers"]} mailers',
            f'{d["deliveries_per_s"]:.0f}/s of {d["ideal_per_s"]:.0f} = {d["ratio_to_ideal"]:.2f}, '
            f'lost {d["lost"]}, dup {d["duplicates"]}, record wait {d["record_wait_mean_ms"]:.2f} ms'
            + (f'; the sink alone {d["sink_alone_per_s"]:.0f}/s' if d.get("sink_alone_per_s") else ""),
            d["ratio_to_ideal"], "≥ 0.9, 0 lost, 0 dup",
            d["ratio_to_ideal"] >= 0.9 and d["lost"] == 0 and d["duplicates"] == 0
            and d["accepted"] == d["posted"] and d["errors"] == 0 and d["complete"])
    drains = [r["drain"]] if "drain" in r else []
    drains += sorted((d for k, d in r.items() if k.startswith("drain_")), key=lambda d: d["workers"])
    for d in drains:
        add(f'drain of {d["backlog"]:,}, {d["workers"]} mailers',
            f'{d["deliveries_per_s"]:.0f}/s = {d["ratio_to_sink_capacity"]:.2f} of the sink '
            f'({d["sink_capacity_per_s"]:.0f}/s over {d["workers"]}), '
            f'lost {d["lost"]}, dup {d["duplicates"]}; PostgreSQL {d["postgres_cpu_ms_per_mail"]:.3f} ms CPU/mail, '
            f'service {d["service_cpu_ms_per_mail"]:.3f}',
            d["ratio_to_sink_capacity"], "≥ 0.5, 0 lost, 0 dup",
            d["ratio_to_sink_capacity"] >= 0.5 and d["lost"] == 0 and d["duplicates"] == 0 and d["complete"])
    if "peak_rss" in r:
        p = r["peak_rss"]["peak_vmhwm_mib"]
        add("peak RSS (VmHWM)", f"{p:.1f} MiB", p, "≤ 40 MiB", p <= 40)
    if "peak_rss_restarted" in r:
        p = r["peak_rss_restarted"]["peak_vmhwm_mib"]
        add("peak RSS, relay and drain services", f"{p:.1f} MiB", p, "≤ 40 MiB", p <= 40)
    if "accept_1m_rows" in r:
        s = r["accept_1m_rows"]
        add(f'accept, +{s["rows_inserted"]:,} old rows',
            f'{s["accepted_per_s"]:.0f} req/s, p99 {s["p99_ms"]:.2f} ms, non-2xx {s["non_2xx"]}',
            s["accepted_per_s"])
        add(f'{s["rows_inserted"]:,} rows ÷ empty', f'{s["ratio_to_empty"]:.2f}', s["ratio_to_empty"],
            "≥ 0.90", s["ratio_to_empty"] >= 0.9 and clean_wrk(s))
    for q in ("page1", "status_sent", "status_failed", "to", "cursor_middle", "cursor_filtered", "search"):
        d = r.get(f"list_{q}")
        if d is None:
            continue
        searching = q == "search"
        add(f'list {q}, {d["rows"]:,} rows',
            f'p50 {d["p50_ms"]:.2f} ms, p99 {d["p99_ms"]:.2f} ms, non-200 {d["non_200"]}', d["p99_ms"],
            "" if searching else "p99 ≤ 20 ms",
            None if searching else (d["p99_ms"] <= 20 and d["non_200"] == 0))
    if "webhooks_hanging_vs_off" in r:
        w = r["webhooks_hanging_vs_off"]
        add(f'webhooks on ({w.get("receiver", "hanging")}) ÷ off',
            f'{w["hanging_receiver_per_s"]:.0f}/s against {w["off_per_s"]:.0f}/s = {w["ratio"]:.2f}, '
            f'record wait {w["record_wait_hanging_ms"]:.2f} against {w["record_wait_off_ms"]:.2f} ms',
            w["ratio"], "≥ 0.9, 0 lost, 0 dup",
            w["ratio"] >= 0.9 and w["lost"] == 0 and w["duplicated"] == 0)
    if "whole_run" in r:
        w = r["whole_run"]
        add("whole run at the sink",
            f'{w["sink_unique"]} distinct mails, {w["duplicates"]} duplicates; {w["pending_at_end"]} pending',
            w["duplicates"], "0 duplicates", w["duplicates"] == 0)
    return rows


def show(rows):
    w1 = max((len(x["name"]) for x in rows), default=0)
    w2 = max((len(x["value"]) for x in rows), default=0)
    for x in rows:
        verdict = "" if x["met"] is None else (": met" if x["met"] else ": NOT met")
        target = f'{x["target"]}{verdict}' if x["target"] else ""
        print(f'  {x["name"]:<{w1}}  {x["value"]:<{w2}}  {target}'.rstrip())


def summary(results, quick, path):
    r = {}
    for line in open(results):
        d = json.loads(line)
        r[d["figure"]] = d
    rows = rows_of(r)
    machine = r.get("machine", {})
    head = {
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "commit": machine.get("commit"),
        "quick": quick,
    }
    print()
    print(f'email-service bench, {head["when"]}, {head["cores"]} cores, {head["commit"]}'
          + (" (--quick: shorter runs, not the reference figures)" if quick else ""))
    show(rows)
    targets = [x for x in rows if x["met"] is not None]
    print(f'  targets met: {sum(1 for x in targets if x["met"])} of {len(targets)}')
    acc = r.get("accept")
    if acc:
        cpu = acc["cpu"]
        print(f'  CPU during accept (% of one core): service {cpu["service"]}, postgres {cpu["postgres"]}, '
              f'wrk {cpu["wrk"]}, redis {cpu["redis"]}, sink {cpu["sink"]}, irq {cpu["irq"]}, '
              f'idle {cpu["idle"]}; not ours: other processes {cpu["others"]}, steal {cpu["steal"]}, '
              f'exited or unaccounted {cpu["unaccounted"]}')
        foreign = cpu["others"] + cpu["steal"] + max(cpu["unaccounted"], 0)
        if foreign > 20:
            print(f"  WARNING: other work took about {foreign:.0f}% of one core during the accept run; "
                  "the figures above are lower than this machine can do")
    waits = r.get("quiet_waits")
    if waits and waits["phases_measured_while_busy"]:
        print(f'  WARNING: {waits["phases_measured_while_busy"]} phases were measured on a busy machine')
    with open(path, "w") as f:
        json.dump({**head, "rows": rows, "figures": r}, f, indent=1)
        f.write("\n")


def compare(a_path, b_path):
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    b_rows = {x["name"]: x for x in b["rows"]}
    a_rows = {x["name"]: x for x in a["rows"]}
    names = [x["name"] for x in a["rows"]] + [x["name"] for x in b["rows"] if x["name"] not in a_rows]
    print(f'A: {a_path}: {a["when"]}, {a["commit"]}' + (" (--quick)" if a.get("quick") else ""))
    print(f'B: {b_path}: {b["when"]}, {b["commit"]}' + (" (--quick)" if b.get("quick") else ""))

    def cell(x):
        if x is None:
            return "-"
        verdict = "" if x["met"] is None else (" met" if x["met"] else " NOT met")
        return x["value"].split(",")[0] + verdict

    w1 = max(len(n) for n in names)
    cells = [(n, cell(a_rows.get(n)), cell(b_rows.get(n))) for n in names]
    w2 = max(len(c[1]) for c in cells)
    w3 = max(len(c[2]) for c in cells)
    print(f'  {"":<{w1}}  {"A":<{w2}}  {"B":<{w3}}  change')
    for n, ca, cb in cells:
        xa, xb = a_rows.get(n), b_rows.get(n)
        change = ""
        if xa and xb and xa["number"] not in (None, 0) and xb["number"] is not None:
            change = f'{100.0 * (xb["number"] / xa["number"] - 1):+.1f} %'
        print(f"  {n:<{w1}}  {ca:<{w2}}  {cb:<{w3}}  {change}".rstrip())


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "summary":
        summary(sys.argv[2], sys.argv[3] == "1", sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
