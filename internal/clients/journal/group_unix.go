//go:build unix

package journal

import (
	"io/fs"
	"syscall"
)

// fileGroup returns the gid owning a file.
func fileGroup(fi fs.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Gid), true
}
