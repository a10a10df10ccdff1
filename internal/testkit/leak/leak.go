// Package leak finds pieces of a secret in text a test collected (an
// error, a log, a Redis dump): a redaction that misses a secret cut in
// half by a truncation still leaks its first half.
package leak

import "strings"

// Piece is the length of the shortest piece of a secret that counts as a
// leak.
const Piece = 8

// Find returns the first Piece-character substring of secret that s
// contains.
func Find(s, secret string) (string, bool) {
	for i := 0; i+Piece <= len(secret); i++ {
		if sub := secret[i : i+Piece]; strings.Contains(s, sub) {
			return sub, true
		}
	}
	return "", false
}
