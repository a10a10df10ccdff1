// Package scrape reads a worker's Prometheus /metrics page the way the
// multi-process tests and the chaos harness watch a process from outside:
// a few series by name, or the sum of a labelled family.
package scrape

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
)

// Series reads the named unlabelled series from the /metrics page at addr
// (host:port) with c; a series the page lacks is absent from the map (on
// an error, so is one the scrape did not reach). The client is the
// caller's so it chooses the timeout and whether the scrape may leave a
// kept-alive connection behind.
func Series(c *http.Client, addr string, names ...string) (map[string]float64, error) {
	out := map[string]float64{}
	err := lines(c, addr, func(line string) {
		for _, n := range names {
			if strings.HasPrefix(line, n+" ") {
				out[n], _ = strconv.ParseFloat(line[len(n)+1:], 64)
			}
		}
	})
	return out, err
}

// Sum sums the samples of the /metrics page at addr whose line starts
// with prefix (a name, or a name and the start of its labels).
func Sum(c *http.Client, addr, prefix string) (float64, error) {
	sum := 0.0
	err := lines(c, addr, func(line string) {
		if strings.HasPrefix(line, prefix) {
			f, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			sum += f
		}
	})
	return sum, err
}

// lines calls each with every line of the page.
func lines(c *http.Client, addr string, each func(string)) error {
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		each(sc.Text())
	}
	return sc.Err()
}
