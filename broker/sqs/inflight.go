package sqs

import (
	"sync"
	"time"
)

// inFlight tracks the messages a worker holds, by receipt handle, with the
// time their visibility ends. It is safe for concurrent use.
type inFlight struct {
	mu   sync.Mutex
	msgs map[string]heldMessage
}

type heldMessage struct {
	received
	deadline time.Time
}

func newInFlight() *inFlight {
	return &inFlight{msgs: make(map[string]heldMessage)}
}

// add tracks msgs, invisible until deadline.
func (f *inFlight) add(msgs []received, deadline time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range msgs {
		f.msgs[m.receipt] = heldMessage{received: m, deadline: deadline}
	}
}

// remove stops tracking msgs.
func (f *inFlight) remove(msgs []received) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range msgs {
		delete(f.msgs, m.receipt)
	}
}

// forget stops tracking the message with receipt handle h.
func (f *inFlight) forget(h string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.msgs, h)
}

// due returns the receipt handles whose visibility ends before t.
func (f *inFlight) due(t time.Time) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var hs []string
	for h, m := range f.msgs {
		if m.deadline.Before(t) {
			hs = append(hs, h)
		}
	}
	return hs
}

// extend moves the deadline of the handles still tracked to deadline.
func (f *inFlight) extend(handles []string, deadline time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range handles {
		if m, ok := f.msgs[h]; ok {
			m.deadline = deadline
			f.msgs[h] = m
		}
	}
}

// all returns every tracked message.
func (f *inFlight) all() []received {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]received, 0, len(f.msgs))
	for _, m := range f.msgs {
		out = append(out, m.received)
	}
	return out
}
