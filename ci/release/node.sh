#!/usr/bin/env bash
# Release part `node` (ci/release.sh runs it; it also runs standalone): the npm package `machnet`
# in napi-rs's per-platform layout, into $DIST/node/:
#
#   machnet-<version>.tgz                             `machnet`: JS + types (index.js loads the
#       addon through napi-rs's binding.js), optionalDependencies on the platform package
#   machnet-rs-machnet-linux-x64-gnu-<version>.tgz    `@machnet-rs/machnet-linux-x64-gnu`: the
#       prebuilt addon (napi.packageName in node/package.json names it)
#
# Built with @napi-rs/cli (node/'s pinned dev dependency): `napi build`, then `napi
# create-npm-dirs`, `napi artifacts` and `napi pre-publish --skip-optional-publish` in a staging
# copy (ci/lib/node-package.sh; nothing is published, node/ is left as it is).
#
#   bash ci/release/node.sh          # env: see ci/lib/release.sh (ROOT, TARGET, DIST, VERSION)
#
# After ci/node.sh (same target dir) the addon is not rebuilt. Prints one `artifact` line per
# tarball; exits non-zero on failure.
set -uo pipefail
# shellcheck source=../lib/release.sh
. "$(dirname "$0")/../lib/release.sh"
# shellcheck source=../lib/node-package.sh
. "$ROOT/ci/lib/node-package.sh"
OUT=$DIST/node

die() {
    echo "release/node: $*" >&2
    exit 1
}

# Both tarballs are version VERSION and the main package depends on the platform package.
check_tarballs() { # main platform
    node - "$1" "$2" "$VERSION" <<'JS'
const { execFileSync } = require('node:child_process')
const [main, platform, version] = process.argv.slice(2)
const manifest = (tgz) => JSON.parse(execFileSync('tar', ['-xzOf', tgz, 'package/package.json']))
const m = manifest(main), p = manifest(platform)
const problems = []
if (m.name !== 'machnet' || m.version !== version) problems.push(`main package is ${m.name}@${m.version}`)
if (p.name !== '@machnet-rs/machnet-linux-x64-gnu' || p.version !== version) problems.push(`platform package is ${p.name}@${p.version}`)
if ((m.optionalDependencies || {})[p.name] !== version) problems.push(`machnet's optionalDependencies: ${JSON.stringify(m.optionalDependencies)}`)
if (!/machnet-rs\/machnet-rs/.test((m.repository || {}).url) || !/machnet-rs\/machnet-rs/.test((p.repository || {}).url)) problems.push('repository URL missing')
const files = execFileSync('tar', ['-tzf', platform], { encoding: 'utf8' })
if (!files.includes('package/machnet.linux-x64-gnu.node')) problems.push('no .node in the platform package')
if (execFileSync('tar', ['-tzf', main], { encoding: 'utf8' }).includes('.node\n')) problems.push('a .node in the main package')
if (problems.length) { console.error(problems.join('; ')); process.exit(1) }
console.error(`${m.name}@${m.version} -> optional ${p.name}@${p.version} (${p.os}/${p.cpu}/${p.libc})`)
JS
}

main() {
    node_build_addon || die "addon build"
    local tarballs
    mapfile -t tarballs < <(node_pack "$OUT")
    [ ${#tarballs[@]} -eq 2 ] || die "napi packaging: expected 2 tarballs, got ${tarballs[*]}"
    check_tarballs "${tarballs[@]}" || die "tarball check"
    artifact "${tarballs[@]}"
}

main "$@"
