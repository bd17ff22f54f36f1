"""Write tests/fixtures/calc/cases.jsonl: arithmetic expressions and what Python 3.11 makes of them.

Each line is {"expr": E, "result": str(eval(E))} or {"expr": E, "error": "<Python exception class>"}. The calculator
in plugins/calc_tools/toolcall must print the same result, or fail where Python fails
(plugins/calc_tools/toolcall/tests/python_oracle.rs compares).

The expressions come from a seeded generator of the grammar the calculator accepts (Python's number literals,
+ - * / // % **, unary signs, parentheses, odd spacing), a list of edge cases, and random single-character mutations
of generated expressions (which are mostly syntax errors). Operators the calculator leaves out on purpose (^, ~, &,
comparisons) are never generated. Exponents stay small so that no intermediate integer exceeds the calculator's size
limit, which Python does not have.

Run: ~/.cache/grpo-rs/venv/bin/python tests/oracles/calc_cases.py
"""

import json
import random
import sys
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "calc" / "cases.jsonl"
SEED = 20250606
N_GENERATED = 2200
N_MUTATED = 600

EDGE_CASES = [
    "2**10", "-2**2", "2**-2**2", "2**3**2", "(-2)**2", "-2**-2", "2*-3**2", "--+-3",
    "7//-2", "-7//2", "-7%3", "7%-3", "7.5//2", "-7.5%2", "7.5%-2", "-0.0%5", "0.0//-3",
    "4/2", "1/10", "1/3", "2/3", "10**16/1", "10**15/1", "0/-5", "-0/5", "1e-5", "0.0001", "1e16", "1e15",
    "10**400/10**399", "10**399/10**400", "2**-1074", "2**-1075", "10.0**-310", "10.0**-400", "10.0**400",
    "1e308*10", "1e308+1e308", "1e999", "-1e999", "1e999-1e999", "1e999*0", "(1e999)**0", "1**1e999",
    "2**1023*2/1", "(2**1024-1)/1", "2**1024/2", "10**400+1.0", "10**400*0.0", "9007199254740993/1",
    "9007199254740993+0.0", "1/0", "1//0", "1%0", "1.0/0", "1.0//0.0", "1.0%0.0", "0**-1", "0.0**-1",
    "0**0", "0.0**0", "(-1)**10**3", "(-1)**(10**3+1)", "(-8)**(1/3)", "(-8)**-1", "(-2.0)**0.5", "(-2.0)**2",
    "2**0.5", "0.1+0.2", "1.1*1.1", "1_000+0x_ff+0o17+0b101", "0XfF", "0B1_0", "1_0.0_1", "1e1_0", "1.e5",
    ".5", "5.", "00", "0_0", "000.5", "007e1", "01", "1__0", "1_", "0x", "0b2", "1..2", ".", "1e", "1e+",
    "3j", "1a", "2(3)", "(1)(2)", "()", "(", ")", "1 2", "1 +", "+", "* 2", "2 * * 3", "2 / / 3", "2 ** ** 3",
    "(1 +\n 2)", "1 +\n 2", "(1\r\n+2)", "\t3\t*\t4", "3\x0c*4", "12345678901234567890*98765432109876543210",
    "123456789012345678901234567890//987654321", "-123456789012345678901234567890%987654321",
    "2**100", "3**200//3**199", "999**7", "(-7)**13", "1.5**300", "1.5**3000", "0.5**3000", "(-0.5)**3001",
    "(((((1)))))", "-(-(-(2)))", "+(+(+2))", "1e-320*1e-10", "5e-324/2", "5e-324", "2.2250738585072014e-308",
    "1.7976931348623157e308", "1.7976931348623157e308*1.0000000000000002", "100000000000000000000.0",
    "123456789.123456789", "0.000123456789", "1/7*7", "10/3*3", "2**53+1", "float_x", "abs(2)",
]

DIGITS = "0123456789"


def int_literal(rng):
    r = rng.random()
    if r < 0.55:
        s = str(rng.randint(0, 20))
    elif r < 0.8:
        s = str(rng.randint(0, 999))
    elif r < 0.9:
        s = str(rng.randint(1, 10 ** rng.randint(4, 30)))
    elif r < 0.94:
        prefix = rng.choice(["0x", "0X", "0o", "0O", "0b", "0B"])
        alphabet = {"x": "0123456789abcdefABCDEF", "o": "01234567", "b": "01"}[prefix[1].lower()]
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
        return prefix + ("_" if rng.random() < 0.2 else "") + body
    else:
        s = str(rng.randint(1000, 10 ** 9))
        # Python allows single underscores between digits.
        s = "_".join([s[i:i + 3] for i in range(0, len(s), 3)])
    return s


def float_literal(rng):
    r = rng.random()
    if r < 0.3:
        return f"{rng.randint(0, 99)}.{rng.randint(0, 99)}"
    if r < 0.45:
        return "." + str(rng.randint(0, 999))
    if r < 0.55:
        return f"{rng.randint(0, 99)}."
    if r < 0.75:
        return f"{rng.randint(1, 9)}{rng.choice(['e', 'E'])}{rng.choice(['', '+', '-'])}{rng.randint(0, 20)}"
    if r < 0.9:
        return repr(rng.uniform(-1, 1) * 10 ** rng.randint(-8, 8)).lstrip("-")
    return f"{rng.randint(1, 9)}.{rng.randint(0, 9)}e{rng.choice(['-', ''])}{rng.randint(0, 300)}"


def space(rng):
    r = rng.random()
    return "" if r < 0.55 else (" " if r < 0.93 else rng.choice(["  ", "\t"]))


def atom(rng, depth):
    r = rng.random()
    if depth < 3 and r < 0.25:
        return "(" + space(rng) + expr(rng, depth + 1) + space(rng) + ")"
    if r < 0.75:
        return int_literal(rng)
    return float_literal(rng)


def exponent(rng):
    """A small right operand for **, possibly signed or chained, so results stay small."""
    r = rng.random()
    sign = rng.choice(["", "", "-", "+"])
    if r < 0.75:
        base = str(rng.randint(0, 5))
    elif r < 0.9:
        base = rng.choice(["0.5", "1.5", ".25", "2.", "0.0"])
    else:
        base = f"{rng.randint(0, 2)}**{rng.randint(0, 3)}"
    return sign + base


def factor(rng, depth):
    unary = "".join(rng.choice(["-", "+", "- "]) for _ in range(rng.choice([0, 0, 0, 0, 1, 1, 2])))
    a = atom(rng, depth)
    if rng.random() < 0.2:
        a = a + space(rng) + "**" + space(rng) + exponent(rng)
    return unary + a


def expr(rng, depth=0):
    n = rng.randint(1, 4 if depth == 0 else 3)
    parts = [factor(rng, depth)]
    for _ in range(n - 1):
        op = rng.choice(["+", "-", "*", "/", "//", "%", "+", "-", "*"])
        parts.append(space(rng) + op + space(rng) + factor(rng, depth))
    return "".join(parts)


MUTATION_CHARS = list("()+-*/%._ex019 a")


def mutate(rng, s):
    i = rng.randrange(len(s) + 1)
    kind = rng.random()
    if kind < 0.4 and len(s) > 1:
        return s[:i] + s[i + 1:]
    if kind < 0.8:
        return s[:i] + rng.choice(MUTATION_CHARS) + s[i:]
    return s[:i] + rng.choice(MUTATION_CHARS) + s[i + 1:]


def python_verdict(e):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = eval(e.strip(), {"__builtins__": {}}, {})
    except Exception as exc:  # noqa: BLE001 - the exception class is the verdict
        return {"error": type(exc).__name__}
    if isinstance(v, bool) or not isinstance(v, (int, float, complex)):
        return {"error": "NotANumber"}
    if isinstance(v, complex):
        return {"error": "ComplexResult"}
    if isinstance(v, int) and v.bit_length() > 10_000:
        return None
    return {"result": str(v)}


def main():
    rng = random.Random(SEED)
    seen = set()
    rows = []

    def add(e):
        if e in seen:
            return
        verdict = python_verdict(e)
        if verdict is None:
            return
        seen.add(e)
        rows.append({"expr": e, **verdict})

    for e in EDGE_CASES:
        add(e)
    generated = []
    while len(generated) < N_GENERATED:
        e = expr(rng)
        if e not in seen:
            generated.append(e)
            add(e)
    for _ in range(N_MUTATED):
        add(mutate(rng, rng.choice(generated)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")
    kinds = {}
    for row in rows:
        k = row.get("error", "result")
        kinds[k] = kinds.get(k, 0) + 1
    print(f"wrote {len(rows)} cases to {OUT} ({OUT.stat().st_size} bytes): {kinds}", file=sys.stderr)


if __name__ == "__main__":
    main()
