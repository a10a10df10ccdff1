package deploy_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	grafana "github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// grafanaDefaulted lists, by panel type, the panel options the dashboard
// leaves to Grafana, and nothing else is let through. Each is required by
// the panel plugin's schema and has a default there, which Grafana applies
// to a dashboard that leaves it out when it loads it; the SDK's NewOptions
// returns those defaults. The strict check fills these fields, and only
// these, from NewOptions before decoding; an option the schema requires
// without a default (stat's orientation) must be in the file.
var grafanaDefaulted = map[string]struct {
	fields   []string
	defaults func() any
}{
	"stat": {
		fields:   []string{"colorMode", "graphMode", "justifyMode", "percentChangeColorMode", "reduceOptions", "showPercentChange", "textMode", "wideLayout"},
		defaults: func() any { return stat.NewOptions() },
	},
	"timeseries": {
		fields:   []string{"legend", "tooltip"},
		defaults: func() any { return timeseries.NewOptions() },
	},
	"table": {
		fields:   []string{"frameIndex", "showHeader"},
		defaults: func() any { return table.NewOptions() },
	},
}

// registerGrafanaPlugins registers the SDK's panel and query kinds, so that
// strict decoding decodes each panel's options into its kind's type and
// each query into the Prometheus query type.
var registerGrafanaPlugins = sync.OnceFunc(plugins.RegisterDefaultPlugins)

// checkGrafanaStrict decodes a dashboard strictly into the Grafana
// foundation SDK's types (unknown fields, wrong types and missing required
// fields fail), after filling the options Grafana defaults
// (grafanaDefaulted), and validates it. It returns the fields it filled.
func checkGrafanaStrict(data []byte) (filled []string, err error) {
	registerGrafanaPlugins()
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, err
	}
	panels, _ := raw["panels"].([]any)
	var errs []error
	for i, p := range panels {
		panel, _ := p.(map[string]any)
		typ, _ := panel["type"].(string)
		where := fmt.Sprintf("panels[%d] (%s %q)", i, typ, panel["title"])
		if typ == "row" {
			continue
		}
		if _, ok := cog.ConfigForPanelcfgVariant(typ); !ok {
			errs = append(errs, fmt.Errorf("%s: panel type has no schema in the SDK", where))
		}
		if d, ok := grafanaDefaulted[typ]; ok {
			opts, _ := panel["options"].(map[string]any)
			if opts == nil {
				opts = map[string]any{}
				panel["options"] = opts
			}
			var defaults map[string]any
			b, _ := json.Marshal(d.defaults())
			if err := json.Unmarshal(b, &defaults); err != nil {
				return nil, err
			}
			for _, f := range d.fields {
				if _, set := opts[f]; set {
					continue
				}
				v, ok := defaults[f]
				if !ok {
					return nil, fmt.Errorf("%s: options.%s is listed as defaulted, but the schema has no default for it", where, f)
				}
				opts[f] = v
				filled = append(filled, fmt.Sprintf("panels[%d].options.%s", i, f))
			}
		}
		// The SDK's panel decoding is lenient on fieldConfig (only its
		// custom part is strict): decode it strictly too.
		if fc, ok := panel["fieldConfig"]; ok {
			b, _ := json.Marshal(fc)
			var src grafana.FieldConfigSource
			if err := sdkErr(src.UnmarshalJSONStrict(b)); err != nil {
				errs = append(errs, fmt.Errorf("%s: fieldConfig: %w", where, err))
			} else if err := sdkErr(src.Validate()); err != nil {
				errs = append(errs, fmt.Errorf("%s: fieldConfig: %w", where, err))
			}
		}
	}
	filledData, err := json.Marshal(raw)
	if err != nil {
		return nil, err
	}
	var d grafana.Dashboard
	if err := sdkErr(d.UnmarshalJSONStrict(filledData)); err != nil {
		return filled, errors.Join(append(errs, err)...)
	}
	if err := sdkErr(d.Validate()); err != nil {
		errs = append(errs, err)
	}
	for i, p := range d.Panels {
		if p.Panel == nil {
			continue
		}
		// Options decoded into the panel kind's own type, not a map: the
		// kind's schema was applied.
		if p.Panel.Options != nil && reflect.TypeOf(p.Panel.Options).Kind() == reflect.Map {
			errs = append(errs, fmt.Errorf("panels[%d]: options of type %q were not decoded into its schema", i, p.Panel.Type))
		}
		for j, q := range p.Panel.Targets {
			if q.DataqueryType() != "prometheus" {
				errs = append(errs, fmt.Errorf("panels[%d].targets[%d]: decoded as a %q query, want prometheus", i, j, q.DataqueryType()))
			}
		}
	}
	return filled, errors.Join(errs...)
}

// sdkErr returns err, or nil for the empty cog.BuildErrors some of the
// SDK's strict decoders return (a nil slice in a non-nil error) when they
// found nothing.
func sdkErr(err error) error {
	var be cog.BuildErrors
	if errors.As(err, &be) && len(be) == 0 {
		return nil
	}
	return err
}

// TestGrafanaDashboardDecodesStrictlyIntoGrafanasSchema checks the
// dashboard against Grafana's own schema types (the Grafana foundation
// SDK): every field known to Grafana with the right type, every required
// field present or defaulted by Grafana (grafanaDefaulted), every panel's
// options decoded into its kind's type and every query into Prometheus's.
func TestGrafanaDashboardDecodesStrictlyIntoGrafanasSchema(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	filled, err := checkGrafanaStrict(data)
	if err != nil {
		t.Fatalf("%s against Grafana's schema:\n%v", dashboardFile, err)
	}
	t.Logf("%d panel options left to Grafana's defaults (%s)", len(filled), strings.Join(uniqueOptionNames(filled), ", "))
}

// TestGrafanaStrictCheckRefusesWhatGrafanaWouldNotRead proves the check
// catches mistakes: each mutated copy of the dashboard must fail it.
func TestGrafanaStrictCheckRefusesWhatGrafanaWouldNotRead(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	firstOf := func(d map[string]any, typ string) map[string]any {
		for _, p := range d["panels"].([]any) {
			if p := p.(map[string]any); p["type"] == typ {
				return p
			}
		}
		t.Fatalf("no %s panel", typ)
		return nil
	}
	tests := []struct {
		name   string
		mutate func(d map[string]any)
		want   string
	}{
		{"unknown dashboard field", func(d map[string]any) { d["titel"] = "x" }, "titel"},
		{"dashboard field of the wrong type", func(d map[string]any) { d["schemaVersion"] = "39" }, "schemaVersion"},
		{"unknown panel field", func(d map[string]any) { firstOf(d, "timeseries")["datasauce"] = map[string]any{} }, "datasauce"},
		{"gridPos of the wrong type", func(d map[string]any) { firstOf(d, "stat")["gridPos"].(map[string]any)["w"] = "6" }, "gridPos"},
		{"unknown stat option", func(d map[string]any) { firstOf(d, "stat")["options"].(map[string]any)["graphmode"] = "none" }, "graphmode"},
		{"stat option of the wrong type", func(d map[string]any) { firstOf(d, "stat")["options"].(map[string]any)["wideLayout"] = "yes" }, "wideLayout"},
		{"required stat option without a default", func(d map[string]any) { delete(firstOf(d, "stat")["options"].(map[string]any), "orientation") }, "orientation"},
		{"unknown timeseries option", func(d map[string]any) {
			firstOf(d, "timeseries")["options"].(map[string]any)["legendd"] = map[string]any{}
		}, "legendd"},
		{"unknown field config", func(d map[string]any) {
			firstOf(d, "timeseries")["fieldConfig"].(map[string]any)["defaults"].(map[string]any)["unti"] = "s"
		}, "unti"},
		{"unknown query field", func(d map[string]any) {
			firstOf(d, "timeseries")["targets"].([]any)[0].(map[string]any)["exprr"] = "up"
		}, "exprr"},
		{"query expression of the wrong type", func(d map[string]any) {
			firstOf(d, "timeseries")["targets"].([]any)[0].(map[string]any)["expr"] = 1
		}, "expr"},
		{"unknown variable field", func(d map[string]any) {
			d["templating"].(map[string]any)["list"].([]any)[0].(map[string]any)["lable"] = "x"
		}, "lable"},
		{"panel type without a schema", func(d map[string]any) { firstOf(d, "table")["type"] = "graph" }, "no schema"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d map[string]any
			if err := json.Unmarshal(data, &d); err != nil {
				t.Fatal(err)
			}
			tt.mutate(d)
			b, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			_, err = checkGrafanaStrict(b)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("check = %v, want an error naming %q", err, tt.want)
			}
		})
	}
}

// uniqueOptionNames returns the option names of paths like
// panels[3].options.legend, sorted and without duplicates.
func uniqueOptionNames(paths []string) []string {
	var names []string
	for _, p := range paths {
		_, name, _ := strings.Cut(p, ".options.")
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}
