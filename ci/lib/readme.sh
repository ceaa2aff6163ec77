# shellcheck shell=bash
# README code examples for the tests that run them (source it; bash only).
#
#   readme_block FILE LANG FIRST_LINE_PREFIX
#       prints the fenced code block ```LANG of FILE whose first line starts with
#       FIRST_LINE_PREFIX (e.g. `# echo_client.py`), without the fences; returns 1 (and says so)
#       unless exactly one block matches

readme_block() {
    local file=$1 lang=$2 prefix=$3 out
    out=$(awk -v lang="$lang" -v prefix="$prefix" '
        !inblock && $0 == "```" lang { inblock = 1; first = 1; buf = ""; next }
        inblock && $0 == "```" { if (keep) { printf "%s", buf; n++ } inblock = 0; keep = 0; next }
        inblock {
            if (first) { keep = index($0, prefix) == 1; first = 0 }
            buf = buf $0 "\n"
        }
        END { if (n != 1) exit 1 }
    ' "$file") || {
        echo "$file: expected exactly one \`\`\`$lang block starting with '$prefix'" >&2
        return 1
    }
    printf '%s\n' "$out"
}
