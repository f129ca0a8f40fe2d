package dispatch

// keys builds every Redis key of the package, and nothing else does.
//
// Keys one Lua script touches together must hash to the same Redis Cluster
// slot. A key with a non-empty {hash tag} hashes only the tag, so
// "{sluice:dispatch}:seen:..." lands in the slot of the untagged stream key
// "sluice:dispatch". That is why the prefix may not contain braces.
type keys struct {
	prefix string
}

// stream is the dispatch stream: <prefix>:dispatch.
func (k keys) stream() string { return k.prefix + ":dispatch" }

// seenPrefix is the start of the dispatch dedupe keys:
// {<prefix>:dispatch}:seen:<source_id>:<message_id>.
func (k keys) seenPrefix() string { return "{" + k.stream() + "}:seen:" }

// seen is the dedupe key of one message in the dispatch stream.
func (k keys) seen(sourceID, messageID string) string {
	return k.seenPrefix() + sourceID + ":" + messageID
}

// deadLetter is the dead-letter stream: <prefix>:deadletter.
func (k keys) deadLetter() string { return k.prefix + ":deadletter" }

// deadLetterSeen is the dedupe key of one dead-lettered message:
// {<prefix>:deadletter}:seen:<source_id>:<message_id>.
func (k keys) deadLetterSeen(sourceID, messageID string) string {
	return "{" + k.deadLetter() + "}:seen:" + sourceID + ":" + messageID
}
