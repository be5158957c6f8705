#!/usr/bin/env python3
"""Validates pipeline files against `chatlake schema` with Python's `jsonschema` (draft 7), as an
editor's language server would: every shipped pipeline (pipelines/*.toml) must pass, and a pipeline with a misspelt or wrong option must fail at that
component. Run by .ci/run:

    python tests/schema/check_pipelines.py path/to/chatlake
"""

import copy
import datetime
import json
import pathlib
import subprocess
import sys
import tomllib

import jsonschema

REPO = pathlib.Path(__file__).resolve().parents[2]

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def as_written(value):
    """The file as an editor sees it: TOML date-times as their text (Taplo does the same)."""
    if isinstance(value, dict):
        return {k: as_written(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_written(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return value


def errors_at(validator, doc):
    """Every error as (instance path, message), the path as `/sinks/lake`."""
    return [
        ("/" + "/".join(str(p) for p in e.absolute_path), e.message)
        for e in validator.iter_errors(doc)
    ]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = subprocess.run([sys.argv[1], "schema"], check=True, capture_output=True, text=True)
    schema = json.loads(out.stdout)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)

    # `*.tests.toml` are the pipelines' tests (`chatlake test`), not pipeline files.
    shipped = sorted(p for p in (REPO / "pipelines").glob("*.toml") if not p.name.endswith(".tests.toml"))
    if len(shipped) < 5:
        fail(f"expected the shipped pipelines, found {shipped}")
    for path in shipped:
        doc = as_written(tomllib.loads(path.read_text()))
        found = errors_at(validator, doc)
        if found:
            fail(f"{path.name} does not validate: {found}")
        else:
            print(f"ok   {path.name} validates")

    demo = as_written(tomllib.loads((REPO / "pipelines" / "demo.toml").read_text()))

    def changed(edit):
        doc = copy.deepcopy(demo)
        edit(doc)
        return doc

    def rename(table, old, new):
        table[new] = table.pop(old)

    cases = [
        ("a misspelt sink option", "/sinks/lake",
         lambda d: rename(d["sinks"]["lake"], "compression", "compresion")),
        ("a value outside the allowed ones", "/sinks/lake",
         lambda d: d["sinks"]["lake"].update(compression="zstdd")),
        ("a misspelt option in a source's auth table", "/sources/sms",
         lambda d: rename(d["sources"]["sms"]["auth"], "key", "api_key")),
        ("a number where a duration string goes", "/sources/sms",
         lambda d: d["sources"]["sms"].update(export_timeout=30)),
        ("a misspelt enum value of a transform", "/transforms/lw_unique",
         lambda d: d["transforms"]["lw_unique"].update(keep="frist")),
        ("an unknown component type", "/transforms/humans",
         lambda d: d["transforms"]["humans"].update(type="bots_filter")),
        ("a transform without inputs", "/transforms/lw_unique",
         lambda d: d["transforms"]["lw_unique"].pop("inputs")),
        ("a source with inputs", "/sources/lw",
         lambda d: d["sources"]["lw"].update(inputs=["sms"])),
        ("a misspelt key of [pipeline]", "/pipeline",
         lambda d: rename(d["pipeline"], "state_dir", "state_directory")),
        ("an unknown top-level table", "/",
         lambda d: d.update(pipelines={"name": "x"})),
        ("a component name that cannot name files", "/sinks",
         lambda d: rename(d["sinks"], "lake", "my lake")),
    ]
    for what, at, edit in cases:
        found = errors_at(validator, changed(edit))
        if any(path == at for path, _ in found):
            print(f"ok   {what} fails at {at}")
        else:
            fail(f"{what} should fail at {at}; errors: {found}")

    print(f"{len(shipped) + len(cases) - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
