"""Static checks of the C# client that need no .NET SDK.

Run by run-tests.sh with the generated code's directory as argument. Each check prints
PASS/FAIL with its reason; the exit code is the number of failures (capped at 1).
"""

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import tree_sitter
import tree_sitter_c_sharp

HERE = Path(__file__).resolve().parent.parent
GENERATED = Path(sys.argv[1])
PROJECTS = [HERE / "Tokenvend.Client", HERE / "Tokenvend.Client.Tests"]

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))


def preprocess(source):
    """Resolves #if/#else/#endif on single symbols, none of them defined, as csc does by default.

    tree-sitter cannot parse a directive inside a base list, which protoc's C# output has
    (`#if !GOOGLE_PROTOBUF_REFSTRUCT_COMPATIBILITY_MODE`). Dropped lines are blanked so that
    line numbers stay right.
    """
    out, active = [], [True]
    for line in source.splitlines():
        directive = re.match(r"\s*#\s*(if|else|endif)\b\s*(.*)", line)
        if not directive:
            out.append(line if all(active) else "")
            continue
        kind, condition = directive.group(1), directive.group(2).strip()
        if kind == "if":
            symbol = re.fullmatch(r"(!?)\s*([A-Za-z_]\w*)", condition)
            if not symbol:
                raise ValueError(f"unsupported #if {condition!r}")
            active.append(bool(symbol.group(1)))  # "!X" holds, "X" does not
        elif kind == "else":
            active[-1] = not active[-1]
        else:
            active.pop()
        out.append("")
    return "\n".join(out).encode()


def syntax_errors(parser, path):
    tree = parser.parse(preprocess(path.read_text()))
    errors = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            line, col = node.start_point
            errors.append(f"{path.name}:{line + 1}:{col + 1} {'missing ' + node.type if node.is_missing else 'unexpected ' + node.text[:40].decode(errors='replace')!r}")
        elif node.has_error:
            stack.extend(node.children)
    return errors


parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_c_sharp.language()))

# 1. Hand-written C# parses (syntax only: no types, overloads or references are resolved).
sources = sorted(p for project in PROJECTS for p in project.glob("*.cs"))
errors = [e for p in sources for e in syntax_errors(parser, p)]
check(f"hand-written C# parses ({len(sources)} files)", bool(sources) and not errors, "; ".join(errors[:10]))

# 2. protoc's C# output parses too, so the grammar accepts real generated code.
generated = sorted(GENERATED.rglob("*.cs"))
errors = [e for p in generated for e in syntax_errors(parser, p)]
check(f"generated C# parses ({len(generated)} files)", bool(generated) and not errors, "; ".join(errors[:10]))

# 3. The generated messages have the namespace, types and properties the client uses.
text = "\n".join(p.read_text() for p in generated)
expected = [
    r"namespace Tokenvend\.V1",
    r"public sealed partial class Token : pb::IMessage<Token>",
    r"public sealed partial class GetTokenRequest : pb::IMessage<GetTokenRequest>",
    r"public string AccessToken \{",
    r"public string TokenType \{",
    r"public global::Google\.Protobuf\.WellKnownTypes\.Timestamp ExpiresAt \{",
    r"public pbc::RepeatedField<string> Scopes \{",
    r"public pbc::MapField<string, string> Headers \{",
    r"public string Profile \{",
    r"public global::Google\.Protobuf\.WellKnownTypes\.Duration MinTtl \{",
    r"public string RejectedToken \{",
]
missing = [pattern for pattern in expected if not re.search(pattern, text)]
check("generated messages have what the client uses", not missing, ", ".join(missing))

# 4. The service stub, when this machine has Grpc's C# plugin (Debian does not package it).
stub = GENERATED / "TokenvendGrpc.cs"
if stub.exists():
    stub_text = stub.read_text()
    wanted = ["public static partial class TokenService", "public partial class TokenServiceClient",
              "GetTokenAsync(global::Tokenvend.V1.GetTokenRequest request, grpc::CallOptions options)"]
    absent = [w for w in wanted if w not in stub_text]
    check("generated TokenServiceClient has GetTokenAsync(request, CallOptions)", not absent, ", ".join(absent))
else:
    print("SKIP generated TokenServiceClient: no grpc_csharp_plugin here (Grpc.Tools generates it at build time)")

# 5. Project files are well-formed and every path they name exists.
problems = []
for project in [HERE / "Directory.Build.props", *(p / f"{p.name}.csproj" for p in PROJECTS)]:
    try:
        root = ET.parse(project).getroot()
    except (ET.ParseError, OSError) as e:
        problems.append(f"{project.name}: {e}")
        continue
    for item in root.iter():
        if item.tag in ("Protobuf", "ProjectReference"):
            target = (project.parent / item.get("Include")).resolve()
            if not target.exists():
                problems.append(f"{project.name}: {item.tag} {item.get('Include')} does not exist")
        if item.tag == "Protobuf" and not (project.parent / item.get("ProtoRoot", ".")).resolve().is_dir():
            problems.append(f"{project.name}: ProtoRoot {item.get('ProtoRoot')} is not a directory")
check("project files are well-formed XML and their paths exist", not problems, "; ".join(problems))

passed = sum(results)
failed = len(results) - passed
print(f"static-checks: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
