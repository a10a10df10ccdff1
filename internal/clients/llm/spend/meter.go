package spend

import (
	"context"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
)

// ChatModel makes chat/completions calls (*llm.Client).
type ChatModel interface {
	Chat(ctx context.Context, r llm.Request) (*llm.Response, error)
}

// Embedder makes embeddings calls (*llm.Client).
type Embedder interface {
	Embed(ctx context.Context, model string, inputs []string) ([][]float32, llm.Usage, error)
}

// settleTimeout bounds a settlement, which runs after the call whatever
// its context says: the call was made and must be charged.
const settleTimeout = 5 * time.Second

// Chat wraps m so that every call is reserved, refused when the kill
// switch is off or a budget would be crossed (a *Refusal, before the
// call), and charged to its task (WithTask) after. lease is how long a
// reservation outlives a worker that died mid-call: the call's timeout and
// a margin.
func (l *Ledger) Chat(m ChatModel, lease time.Duration) ChatModel {
	if m == nil {
		return nil
	}
	return meteredChat{l: l, m: m, lease: lease}
}

// Embedder wraps e like Chat; the kill switch, which is for chat calls,
// does not apply.
func (l *Ledger) Embedder(e Embedder, lease time.Duration) Embedder {
	if e == nil {
		return nil
	}
	return meteredEmbedder{l: l, e: e, lease: lease}
}

type meteredChat struct {
	l     *Ledger
	m     ChatModel
	lease time.Duration
}

// promptTokens estimates a prompt: a quarter token per character, as the
// cluster's token rate limit does.
func promptTokens(chars int) int64 { return max(1, int64(chars)/4) }

func (mc meteredChat) Chat(ctx context.Context, r llm.Request) (*llm.Response, error) {
	task := TaskOf(ctx)
	chars := 0
	for _, m := range r.Messages {
		chars += len(m.Content)
	}
	prompt := promptTokens(chars)
	completion := int64(max(r.MaxTokens, 0))
	est := reserved{Tokens: prompt + completion}
	if p, ok := mc.l.Price(r.Model); ok {
		est.USDNano = p.Cost(prompt, completion)
	}
	res, err := mc.l.reserve(ctx, task, r.Model, est, true, mc.lease)
	if err != nil {
		return nil, err
	}
	resp, err := mc.m.Chat(ctx, r)
	purpose := r.Purpose
	if purpose == "" {
		purpose = "chat"
	}
	c := Charge{Purpose: purpose, Items: int64(max(r.Items, 0))}
	u := llm.UsageOf(err)
	content := ""
	if resp != nil {
		u, content, c.Answered = resp.Usage, resp.Content, true
	} else if u != (llm.Usage{}) {
		c.Answered = true // a 200 the caller could not use: billed all the same
	}
	c.Prompt, c.Completion = int64(u.PromptTokens), int64(u.CompletionTokens)
	if c.Answered && c.Prompt+c.Completion == 0 {
		// No usage reported: the prompt's estimate plus the reply's size.
		c.Prompt, c.Completion, c.Estimated = prompt, int64(len(content))/4, true
	}
	mc.l.settleAfter(ctx, res, c)
	return resp, err
}

type meteredEmbedder struct {
	l     *Ledger
	e     Embedder
	lease time.Duration
}

func (me meteredEmbedder) Embed(ctx context.Context, model string, inputs []string) ([][]float32, llm.Usage, error) {
	if len(inputs) == 0 {
		return me.e.Embed(ctx, model, inputs)
	}
	task := TaskOf(ctx)
	chars := 0
	for _, in := range inputs {
		chars += len(in)
	}
	prompt := promptTokens(chars)
	est := reserved{Tokens: prompt}
	if p, ok := me.l.Price(model); ok {
		est.USDNano = p.Cost(prompt, 0)
	}
	res, err := me.l.reserve(ctx, task, model, est, false, me.lease)
	if err != nil {
		return nil, llm.Usage{}, err
	}
	vecs, u, err := me.e.Embed(ctx, model, inputs)
	c := Charge{Purpose: "embedding", Items: int64(len(inputs)),
		Prompt: int64(u.PromptTokens), Completion: int64(u.CompletionTokens), Answered: err == nil || u != (llm.Usage{})}
	if c.Answered && c.Prompt+c.Completion == 0 {
		c.Prompt, c.Estimated = prompt, true
	}
	me.l.settleAfter(ctx, res, c)
	return vecs, u, err
}

// settleAfter settles r whatever ctx says (the call was made), within
// settleTimeout. A settlement that fails leaves the reservation to lapse
// at its lease's end, uncharged, and is logged.
func (l *Ledger) settleAfter(ctx context.Context, r *reservation, c Charge) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	if _, err := l.settle(sctx, r, c); err != nil {
		l.o.Logger.WarnContext(ctx, "LLM call not charged: the spend ledger could not be written", "task", r.task,
			"model", r.model, "prompt_tokens", c.Prompt, "completion_tokens", c.Completion, "error", err)
	}
}
