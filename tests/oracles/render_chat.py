"""Chat-template oracle: renders with Jinja2 configured as transformers' apply_chat_template does
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, raise_exception,
json.dumps-based tojson). Usage: /usr/bin/python3 render_chat.py IN.json OUT.json
IN: {"cases": [{"config": path to a tokenizer_config-like JSON, "messages": [...], "tools": [...]|null,
     "add_generation_prompt": bool, "extra": {...}}]}
OUT: {"results": [{"ok": true, "text": "..."} or {"ok": false, "error": "..."}]}"""
import json
import sys

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main():
    cases = json.load(open(sys.argv[1], encoding="utf-8"))["cases"]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    compiled = {}
    results = []
    for case in cases:
        try:
            config = json.load(open(case["config"], encoding="utf-8"))
            key = case["config"]
            if key not in compiled:
                compiled[key] = env.from_string(config["chat_template"])
            kwargs = {"messages": case["messages"], "tools": case.get("tools"), "documents": None,
                      "add_generation_prompt": case.get("add_generation_prompt", False)}
            for name in ("bos_token", "eos_token"):
                if config.get(name):
                    kwargs[name] = config[name]
            kwargs.update(case.get("extra") or {})
            results.append({"ok": True, "text": compiled[key].render(**kwargs)})
        except Exception as e:  # the template's own raise_exception, or a Jinja error
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    json.dump({"results": results}, open(sys.argv[2], "w", encoding="utf-8"), ensure_ascii=False)


main()
