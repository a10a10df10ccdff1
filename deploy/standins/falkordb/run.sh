#!/bin/sh
# The stand-in FalkorDB image's entrypoint, written for the interface of the
# upstream image's run.sh (see Containerfile): its arguments are ignored, as
# upstream's are; the server takes REDIS_ARGS, the module FALKORDB_ARGS.
set -e
if [ "${TLS:-0}" = 1 ]; then
	echo "run.sh: TLS=1 is not reproduced by this stand-in image" >&2
	exit 1
fi
mkdir -p "$FALKORDB_DATA_PATH"
# shellcheck disable=SC2086 # REDIS_ARGS and FALKORDB_ARGS are word lists
exec redis-server ${REDIS_ARGS} --protected-mode no \
	--dir "$FALKORDB_DATA_PATH" \
	--loadmodule "$FALKORDB_BIN_PATH/falkordb.so" ${FALKORDB_ARGS}
