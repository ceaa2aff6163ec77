# shellcheck shell=bash
# Building and packing the Node.js package (node/) with napi-rs; shared by ci/node.sh (tests the
# tarballs) and ci/release/node.sh (the tarballs of a release). Source it (bash only) with ROOT
# and TARGET set. The addon builds in its own cargo target dir, $TARGET/node-addon: sharing
# one with the Python wheel's build (maturin + zig, same dependency crates) makes each build
# recompile what the other just built; this way the second addon build (ci/node.sh, then
# ci/release/node.sh) is only napi-rs checking what cargo already built.
#
#   node_build_addon     `npm ci` (dev tools: @napi-rs/cli, typescript) and `npm run build` (napi
#                        build --platform --release) in node/: machnet.linux-x64-gnu.node,
#                        binding.js, binding.d.ts next to index.js
#   node_pack OUTDIR     the two tarballs of napi-rs's per-platform layout into OUTDIR:
#                          machnet-<v>.tgz                              JS + types; its
#                              optionalDependencies name the platform package
#                          machnet-rs-machnet-linux-x64-gnu-<v>.tgz     @machnet-rs/machnet-linux-x64-gnu:
#                              the prebuilt .node (os linux, cpu x64, libc glibc)
#                        made with napi-rs's own commands in a staging copy ($TARGET/npm-package;
#                        node/ itself is left as it is): `npm pack` of node/ (the files of its
#                        `files` list), `napi create-npm-dirs`, `napi artifacts` (moves the .node
#                        into the platform package), `napi pre-publish --skip-optional-publish
#                        --no-gh-release` (validates the platform package and writes the main
#                        package's optionalDependencies; publishes nothing), `npm pack` of both.
#                        Prints the two tarball paths (main package first)

NAPI=$ROOT/node/node_modules/.bin/napi
NODE_STAGE=$TARGET/npm-package

node_build_addon() {
    (cd "$ROOT/node" && npm ci --no-audit --no-fund --loglevel=error) || {
        echo "npm ci failed" >&2
        return 1
    }
    (cd "$ROOT/node" && CARGO_TARGET_DIR=$TARGET/node-addon npm run --silent build) || {
        echo "napi build failed" >&2
        return 1
    }
}

# create-npm-dirs writes "the binary for `<napi.packageName>`" into each platform package's README;
# the package that loads it is `machnet`.
_platform_readmes() { # npm dir
    local readme
    for readme in "$1"/*/README.md; do
        sed -i 's|binary for `@machnet-rs/machnet`|binary of the npm package [`machnet`](https://www.npmjs.com/package/machnet), which installs and loads it|' "$readme" &&
            grep -q 'package \[`machnet`\]' "$readme" || return 1
    done
}

# npm pack DIR into OUTDIR; prints the tarball's path.
_npm_pack() { # dir outdir
    local name
    name=$(cd "$1" && npm pack --pack-destination "$2" --loglevel=error | tail -1) && [ -f "$2/$name" ] || {
        echo "npm pack in $1 failed" >&2
        return 1
    }
    echo "$2/$name"
}

node_pack() { # outdir
    local out=$1 stage=$NODE_STAGE main root
    rm -rf "$stage"
    mkdir -p "$stage" "$out" || return 1
    # The files node/package.json publishes (its `files` list), built addon included.
    main=$(_npm_pack "$ROOT/node" "$stage") || return 1
    tar -xzf "$main" -C "$stage" && rm "$main" || return 1
    root=$stage/package
    (
        cd "$root" || exit 1
        "$NAPI" create-npm-dirs >&2 &&
            _platform_readmes npm &&
            "$NAPI" artifacts --output-dir . --npm-dir npm >&2 &&
            rm -f ./*.node &&
            "$NAPI" pre-publish --skip-optional-publish --no-gh-release >&2
    ) || {
        echo "napi create-npm-dirs / artifacts / pre-publish failed in $root" >&2
        return 1
    }
    local dir
    rm -f "$out"/machnet-*.tgz
    _npm_pack "$root" "$out" || return 1
    for dir in "$root"/npm/*/; do
        _npm_pack "$dir" "$out" || return 1
    done
}
