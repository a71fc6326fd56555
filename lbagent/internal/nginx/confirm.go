package nginx

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Confirm polls url every interval until its body, trimmed of space, equals
// want, proving that the reloaded config is the one serving. It returns the
// last thing it saw in its error when ctx ends first.
func Confirm(ctx context.Context, client *http.Client, url, want string, interval time.Duration) error {
	last := "no answer"
	for {
		got, err := fetch(ctx, client, url)
		if err == nil && got == want {
			return nil
		}
		switch {
		case err == nil:
			last = fmt.Sprintf("generation %q", got)
		case ctx.Err() == nil:
			last = err.Error()
			// A request cut short by the deadline itself says nothing about
			// nginx: keep the last real observation for the error.
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("confirm generation %q at %s: %w (last: %s)", want, url, ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// Served returns the generation the status listener at url reports.
func Served(ctx context.Context, client *http.Client, url string) (string, error) {
	return fetch(ctx, client, url)
}

func fetch(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return strings.TrimSpace(string(body)), nil
}
