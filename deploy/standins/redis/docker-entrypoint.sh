#!/bin/sh
# The stand-in redis image's entrypoint, written for the interface of the
# upstream image's (see Containerfile).
set -e

# `--appendonly yes` or `my.conf` alone: run redis-server with them.
case "$1" in
-*|*.conf) set -- redis-server "$@" ;;
esac

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
	# Started as root: hand /data to redis and run as redis from here on.
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$1" = redis-server ]; then
	# The upstream server is built with protected mode off; Debian's is
	# not, and would refuse every other container without a password.
	case " $* " in
	*" --protected-mode "*) ;;
	*) set -- "$@" --protected-mode no ;;
	esac
	# As upstream: files the server creates are private unless the caller
	# chose a umask.
	[ "$(umask)" != 0022 ] || umask 0077
fi

exec "$@"
