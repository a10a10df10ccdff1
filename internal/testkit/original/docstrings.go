package original

import (
	"regexp"
	"strings"
)

var (
	sectionName = regexp.MustCompile(`^\s*(?:@background_task\(([^()]*)\)\s*)?(class|async def|def) (\w+)(\(\s*self\b)?`)
	nameArg     = regexp.MustCompile(`\bname="([^"]*)"`)
)

// Sections returns the rendered documentation of each function, class and
// method of the module, by name: a decorated task under its registry name
// (the decorator's name=, else the function's), a method as
// "Class.method", anything else under its own name. A section runs from
// its definition to the next one.
func Sections() (map[string]string, error) {
	src, err := Source()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	class := ""
	for _, part := range strings.Split(src, "[docs]")[1:] {
		m := sectionName.FindStringSubmatch(part)
		if m == nil {
			continue
		}
		name := m[3]
		if n := nameArg.FindStringSubmatch(m[1]); n != nil {
			name = n[1]
		}
		switch {
		case m[2] == "class":
			class = name
		case m[4] != "" && class != "":
			name = class + "." + name
		default:
			class = ""
		}
		out[name] = part
	}
	return out, nil
}
