// Package original reads the task declarations out of the original Python
// module (kept verbatim in testdata), so tests check the Go catalog against
// the source rather than against a second hand-written table.
package original

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Task is one @background_task declaration.
type Task struct {
	Name         string
	Interval     time.Duration
	InitialDelay time.Duration
	// Requires holds the requires_* flags that are True, without the
	// "requires_" prefix (redis, kg, openrouter, bot_runner, chat_llm, config).
	Requires []string
	OptIn    string
}

var (
	decoratorRe = regexp.MustCompile(`@background_task\(([^()]*)\)\s*async def (\w+)\(`)
	argRe       = regexp.MustCompile(`(\w+)=("[^"]*"|[\w.]+)`)
)

// Source returns the text of the original module.
func Source() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "testdata", "background_tasks_original.txt"))
	return string(b), err
}

// Tasks parses every decorated task, in source order.
func Tasks() ([]Task, error) {
	src, err := Source()
	if err != nil {
		return nil, err
	}
	var out []Task
	for _, m := range decoratorRe.FindAllStringSubmatch(src, -1) {
		t := Task{Name: m[2]}
		for _, a := range argRe.FindAllStringSubmatch(m[1], -1) {
			key, val := a[1], strings.Trim(a[2], `"`)
			switch {
			case key == "interval" || key == "initial_delay":
				f, err := strconv.ParseFloat(strings.ReplaceAll(val, "_", ""), 64)
				if err != nil {
					return nil, fmt.Errorf("%s: %s=%q: %w", m[2], key, val, err)
				}
				d := time.Duration(f * float64(time.Second))
				if key == "interval" {
					t.Interval = d
				} else {
					t.InitialDelay = d
				}
			case key == "name":
				t.Name = val
			case key == "opt_in_config_flag":
				t.OptIn = val
			case strings.HasPrefix(key, "requires_"):
				if val == "True" {
					t.Requires = append(t.Requires, strings.TrimPrefix(key, "requires_"))
				}
			default:
				return nil, fmt.Errorf("%s: unknown decorator argument %s", m[2], key)
			}
		}
		out = append(out, t)
	}
	return out, nil
}
