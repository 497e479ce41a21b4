"""The GPU check's Markdown: a header, one table of stages, one table of measurements."""
from __future__ import annotations


def _number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(row: dict) -> str:
    if row.get("error"):
        return "error"
    number = _number(row.get("value"))
    return f"{number} {row.get('unit', '')}".strip()


def _check(row: dict) -> str:
    if row.get("error"):
        return ""
    return {True: "pass", False: "FAIL"}.get(row.get("ok"), "")


def _util(row: dict) -> str:
    if "gpu_util_mean" not in row:
        return "n/a"
    return f"{row['gpu_util_mean']:.0f} / {row['gpu_util_max']:.0f}"


def header(report: dict) -> list[str]:
    env = report.get("environment") or {}
    profile = report.get("profile") or {}
    device = report["device"] + (f" ({env['gpu']})" if env.get("gpu") else "")
    lines = [f"# GPU check: {device}, {report['started']}", ""]
    versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "cuda", "timm") if env.get(k))
    if profile:
        lines.append(f"Profile `{profile['name']}`: {profile['width']}x{profile['height']} synthetic images, at most "
                     f"{profile['episodes']} timed episodes or {profile['slice_s']:g} s per measurement. {versions}.")
    source = report["util_source"]
    sampled = source if source.startswith("n/a") else f"sampled with {source}"
    lines.append(f"GPU utilisation and memory in use: {sampled}; torch peak = "
                 f"torch.cuda.max_memory_allocated per measurement. CPU vs device agreement tolerance on score maps "
                 f"in [0, 1]: max |diff| <= {report['tolerance']['max_abs']:g}, mean |diff| <= "
                 f"{report['tolerance']['mean_abs']:g}. Total {report['seconds']:.0f} s.")
    return lines + [""]


def stage_table(report: dict) -> list[str]:
    lines = ["| stage | status | s | cap s | error or reason |", "|---|---|---|---|---|"]
    for stage in report["stages"]:
        lines.append(f"| {stage['name']} | {stage['status']} | {stage['seconds']:.0f} | {stage['cap_s']:.0f} | "
                     f"{_cell(stage.get('error') or '')} |")
    return lines + [""]


def measurement_table(report: dict) -> list[str]:
    lines = ["| stage | measure | value | check | torch peak MiB | GPU used MiB (max) | GPU util % mean / max | note |",
             "|---|---|---|---|---|---|---|---|"]
    for stage in report["stages"]:
        for row in stage.get("rows", []):
            note = f"error: {row['error']}" if row.get("error") else row.get("note", "")
            peak = _number(row.get("torch_peak_mib")) or "n/a"
            used = _number(row.get("gpu_mem_max_mib")) or "n/a"
            lines.append(f"| {stage['name']} | {_cell(row['measure'])} | {_cell(_value(row))} | {_check(row)} | {peak} | "
                         f"{used} | {_util(row)} | {_cell(note)} |")
    return lines


def markdown(report: dict) -> str:
    return "\n".join(header(report) + stage_table(report) + measurement_table(report)) + "\n"
