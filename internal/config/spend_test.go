package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/stargazer/stargazer-jobs/internal/config"
)

func TestBudgetsAreTokensOrDollarsPerTask(t *testing.T) {
	got, err := config.ParseBudgets("anamnesis_digest=$0.50, channel_summarization=2M,limbic_anchoring_worker=500k,auto_kg_extraction=120000,x=1.5M,*=$5")
	if err != nil {
		t.Fatal(err)
	}
	want := config.Budgets{
		"anamnesis_digest":        {USD: 0.5, InUSD: true},
		"channel_summarization":   {Tokens: 2_000_000},
		"limbic_anchoring_worker": {Tokens: 500_000},
		"auto_kg_extraction":      {Tokens: 120_000},
		"x":                       {Tokens: 1_500_000},
		"*":                       {USD: 5, InUSD: true},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %+v, want %+v", k, got[k], v)
		}
	}
	if s := (config.Budget{Tokens: 2_000_000}).String(); s != "2M" {
		t.Errorf("String %q", s)
	}
}

func TestPricesAreUSDPerMillionPromptAndCompletionTokens(t *testing.T) {
	got, err := config.ParsePrices("google/gemini-2.5-flash=0.30/2.50,google/gemini-2.5-flash-lite=0.10/0.40")
	if err != nil {
		t.Fatal(err)
	}
	if p := got["google/gemini-2.5-flash"]; p.Prompt != 0.30 || p.Completion != 2.50 || len(got) != 2 {
		t.Fatalf("got %+v", got)
	}
}

// A malformed entry stops startup, and the message names the entry.
func TestAMalformedPriceOrBudgetEntryStopsStartupNamingIt(t *testing.T) {
	for _, c := range []struct{ env, value, entry string }{
		{"LLM_BUDGETS", "channel_summarization=2M,anamnesis_digest=$0.5x", "anamnesis_digest=$0.5x"},
		{"LLM_BUDGETS", "channel_summarization=-5", "channel_summarization=-5"},
		{"LLM_BUDGETS", "channel_summarization=2G", "channel_summarization=2G"},
		{"LLM_BUDGETS", "channel_summarization", "channel_summarization"},
		{"LLM_BUDGETS", "a=1,a=2", "a=2"},
		{"LLM_BUDGETS", "a=1.5", "a=1.5"},
		{"LLM_PRICES", "google/gemini-2.5-flash=0.30", "google/gemini-2.5-flash=0.30"},
		{"LLM_PRICES", "m=0.30/x", "m=0.30/x"},
		{"LLM_PRICES", "m=-1/2", "m=-1/2"},
		{"LLM_PRICES", "=1/2", "=1/2"},
	} {
		t.Run(c.value, func(t *testing.T) {
			env := map[string]string{c.env: c.value}
			_, err := config.Load(func(k string) string { return env[k] }, nil, nil)
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Setting != c.env {
				t.Fatalf("err = %v, want a config error on %s", err, c.env)
			}
			if !strings.Contains(err.Error(), "entry \""+c.entry+"\"") {
				t.Fatalf("%v does not name the entry %q", err, c.entry)
			}
		})
	}
}
