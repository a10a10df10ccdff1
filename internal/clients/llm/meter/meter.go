// Package meter charges every LLM call to the spend ledger
// (internal/spend): it wraps a chat model or an embedder so
// that each call reserves its estimate before it starts (and is refused,
// as an llm.ErrRefused, when the kill switch is off or a budget would be
// crossed), and is settled to the usage the provider reported after.
package meter

import (
	"context"
	"time"

	"github.com/stargazer/stargazer-jobs/internal/clients/llm"
	"github.com/stargazer/stargazer-jobs/internal/spend"
)

// ChatModel makes chat/completions calls (*llm.Client).
type ChatModel interface {
	Chat(ctx context.Context, r llm.Request) (*llm.Response, error)
}

// EmbeddingModel makes embeddings calls (*llm.Client).
type EmbeddingModel interface {
	Embed(ctx context.Context, model string, inputs []string) ([][]float32, llm.Usage, error)
}

// Chat wraps m so that every call is reserved, refused when the kill
// switch is off or a budget would be crossed (an llm.ErrRefused wrapping
// the *spend.Refusal, before the call), and charged to its task
// (spend.WithTask) after. lease is how long a
// reservation outlives a worker that died mid-call: the call's timeout and
// a margin.
func Chat(l *spend.Ledger, m ChatModel, lease time.Duration) ChatModel {
	if m == nil {
		return nil
	}
	return meteredChat{l: l, m: m, lease: lease}
}

// Embedder wraps e like Chat; the kill switch, which is for chat calls,
// does not apply.
func Embedder(l *spend.Ledger, e EmbeddingModel, lease time.Duration) EmbeddingModel {
	if e == nil {
		return nil
	}
	return meteredEmbedder{l: l, e: e, lease: lease}
}

type meteredChat struct {
	l     *spend.Ledger
	m     ChatModel
	lease time.Duration
}

// promptTokens estimates a prompt: a quarter token per character, as the
// cluster's token rate limit does.
func promptTokens(chars int) int64 { return max(1, int64(chars)/4) }

func (mc meteredChat) Chat(ctx context.Context, r llm.Request) (*llm.Response, error) {
	task := spend.TaskOf(ctx)
	chars := 0
	for _, m := range r.Messages {
		chars += len(m.Content)
	}
	prompt := promptTokens(chars)
	completion := int64(max(r.MaxTokens, 0))
	est := spend.Call{Task: task, Model: r.Model, Tokens: prompt + completion, Chat: true}
	if p, ok := mc.l.Price(r.Model); ok {
		est.USDNano = p.Cost(prompt, completion)
	}
	res, err := mc.l.Reserve(ctx, est, mc.lease)
	if err != nil {
		return nil, refused(err)
	}
	resp, err := mc.m.Chat(ctx, r)
	purpose := r.Purpose
	if purpose == "" {
		purpose = "chat"
	}
	c := spend.Charge{Purpose: purpose, Items: int64(max(r.Items, 0))}
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
	mc.l.SettleLater(ctx, res, c)
	return resp, err
}

type meteredEmbedder struct {
	l     *spend.Ledger
	e     EmbeddingModel
	lease time.Duration
}

func (me meteredEmbedder) Embed(ctx context.Context, model string, inputs []string) ([][]float32, llm.Usage, error) {
	if len(inputs) == 0 {
		return me.e.Embed(ctx, model, inputs)
	}
	task := spend.TaskOf(ctx)
	chars := 0
	for _, in := range inputs {
		chars += len(in)
	}
	prompt := promptTokens(chars)
	est := spend.Call{Task: task, Model: model, Tokens: prompt}
	if p, ok := me.l.Price(model); ok {
		est.USDNano = p.Cost(prompt, 0)
	}
	res, err := me.l.Reserve(ctx, est, me.lease)
	if err != nil {
		return nil, llm.Usage{}, refused(err)
	}
	vecs, u, err := me.e.Embed(ctx, model, inputs)
	c := spend.Charge{Purpose: "embedding", Items: int64(len(inputs)),
		Prompt: int64(u.PromptTokens), Completion: int64(u.CompletionTokens), Answered: err == nil || u != (llm.Usage{})}
	if c.Answered && c.Prompt+c.Completion == 0 {
		c.Prompt, c.Estimated = prompt, true
	}
	me.l.SettleLater(ctx, res, c)
	return vecs, u, err
}

// refusal is a spend.Refusal as the LLM clients' callers see it: an
// llm.ErrRefused, which stops a run at once and defers it (errors.As
// still finds the *spend.Refusal, for the deferral's details).
type refusal struct{ *spend.Refusal }

func (r refusal) Is(target error) bool { return target == llm.ErrRefused }
func (r refusal) Unwrap() error        { return r.Refusal }

// refused marks a refusal of the ledger as an llm.ErrRefused; other
// errors (Redis) pass as they are.
func refused(err error) error {
	if r, ok := spend.AsRefusal(err); ok {
		return refusal{r}
	}
	return err
}
