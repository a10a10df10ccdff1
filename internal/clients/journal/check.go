package journal

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// LocalDirs are where journalctl looks for this machine's journal when it
// is given no directory: the persistent journal, then the volatile one.
func LocalDirs() []string { return []string{"/var/log/journal", "/run/log/journal"} }

// State is what a node agent can make of its journal.
type State string

// The states of a journal, from the files journalctl would read.
const (
	// StateReadable: at least one journal file is readable.
	StateReadable State = "readable"
	// StateMissing: none of the journal directories exists.
	StateMissing State = "missing"
	// StateEmpty: a directory exists but holds no journal file of this
	// machine.
	StateEmpty State = "empty"
	// StateUnreadable: journal files exist and this process can read none.
	StateUnreadable State = "unreadable"
)

// States lists every State, for metrics that export one series per state.
var States = []State{StateReadable, StateMissing, StateEmpty, StateUnreadable}

// Status is the outcome of one Check.
type Status struct {
	State State
	// Dirs are the journal directories that exist.
	Dirs []string
	// Files counts the journal files journalctl would read; Readable how
	// many of them this process could open (Check stops opening at the
	// first that opens).
	Files, Readable int
	// Foreign counts journal files of other machine ids, which journalctl
	// skips unless given a directory.
	Foreign int
	// Detail says what was found and, when the journal cannot be read,
	// what to do about it.
	Detail string
}

// CheckOptions say where Check looks.
type CheckOptions struct {
	// Dirs are the directories searched (default LocalDirs).
	Dirs []string
	// Directory is true when Dirs is a directory given to journalctl with
	// --directory: it then reads every machine's files there. Without it,
	// journalctl reads /var/log/journal/<machine id> (and the files at the
	// top of each directory and under /run whatever their machine id).
	Directory bool
	// MachineID is this machine's id (/etc/machine-id); empty counts every
	// machine's files as this one's.
	MachineID string
}

// Check looks at the journal files journalctl would read, the way it
// finds them: *.journal and *.journal~ files at the top of each directory
// and in its machine-id subdirectories. It reads no entry: journalctl gives
// no sign of a journal it cannot read (`journalctl -f` waits in silence
// for files to appear), so the agent has to look for itself.
func Check(o CheckOptions) Status {
	dirs := o.Dirs
	if len(dirs) == 0 {
		dirs = LocalDirs()
	}
	var st Status
	var unreadable []string
	var denied []string
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			st.Dirs = append(st.Dirs, dir)
			denied = append(denied, dir)
			continue
		}
		st.Dirs = append(st.Dirs, dir)
		var files []string
		for _, e := range entries {
			name := e.Name()
			switch {
			case isJournalFile(name) && !e.IsDir():
				files = append(files, filepath.Join(dir, name))
			case e.IsDir() && isMachineID(name):
				sub, err := os.ReadDir(filepath.Join(dir, name))
				local := o.Directory || o.MachineID == "" || name == o.MachineID || strings.HasPrefix(dir, "/run/")
				if err != nil {
					if local {
						denied = append(denied, filepath.Join(dir, name))
					}
					continue
				}
				for _, f := range sub {
					if !isJournalFile(f.Name()) || f.IsDir() {
						continue
					}
					if local {
						files = append(files, filepath.Join(dir, name, f.Name()))
					} else {
						st.Foreign++
					}
				}
			}
		}
		st.Files += len(files)
		for _, f := range files {
			if st.Readable > 0 {
				break // one readable file is enough to know
			}
			fh, err := os.Open(f)
			if err != nil {
				unreadable = append(unreadable, f)
				continue
			}
			fh.Close()
			st.Readable++
		}
	}
	switch {
	case st.Readable > 0:
		st.State = StateReadable
		st.Detail = fmt.Sprintf("%d journal files in %s", st.Files, strings.Join(st.Dirs, ", "))
	case len(st.Dirs) == 0:
		st.State = StateMissing
		st.Detail = fmt.Sprintf("no journal directory: %s do not exist here; mount the host's journal read-only at the same path (or leave this node out: stargazer.io/journal=none)",
			strings.Join(dirs, " and "))
	case st.Files > 0 || len(denied) > 0:
		st.State = StateUnreadable
		what := fmt.Sprintf("%d journal files", st.Files)
		if len(denied) > 0 {
			what = "the journal directory " + strings.Join(denied, ", ")
		}
		st.Detail = fmt.Sprintf("%s, none readable by %s%s; add the files' group to the process's groups (Kubernetes: supplementalGroups, compose: group_add / JOURNAL_GID)",
			what, identity(), groupOf(append(unreadable, denied...)))
	default:
		st.State = StateEmpty
		st.Detail = fmt.Sprintf("no journal file in %s", strings.Join(st.Dirs, ", "))
		if st.Foreign > 0 {
			st.Detail += fmt.Sprintf("; %d files of other machine ids, which journalctl skips: is /etc/machine-id (%s) the host's?", st.Foreign, o.MachineID)
		} else {
			st.Detail += " (journald keeps none there: see the host's journald Storage= setting, and whether the host's journal directory is the one mounted)"
		}
	}
	return st
}

// isJournalFile is journalctl's own test: online, archived and dirty
// (unclean shutdown) journal files.
func isJournalFile(name string) bool {
	return strings.HasSuffix(name, ".journal") || strings.HasSuffix(name, ".journal~")
}

// isMachineID is true for 32 lower-case hexadecimal digits.
func isMachineID(name string) bool {
	if len(name) != 32 {
		return false
	}
	for _, c := range name {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// identity names the process's user and groups, for messages.
func identity() string {
	groups, _ := os.Getgroups()
	return fmt.Sprintf("uid %d (gid %d, groups %v)", os.Getuid(), os.Getgid(), groups)
}

// groupOf names the group owning the first of paths that has one, for
// messages: the group to add.
func groupOf(paths []string) string {
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			if gid, ok := fileGroup(fi); ok {
				return fmt.Sprintf(" (they belong to gid %d)", gid)
			}
		}
	}
	return ""
}
