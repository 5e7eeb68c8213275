package api

import (
	"context"
	"strings"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
)

// depthLimit refuses operations whose fields nest deeper than max. The
// schema's deepest real query (deliveries → edges → node → field) is 4
// levels; introspection fields are not counted, since the schema bounds
// their answers.
type depthLimit struct{ max int }

var _ interface {
	graphql.HandlerExtension
	graphql.OperationContextMutator
} = depthLimit{}

func (depthLimit) ExtensionName() string                   { return "DepthLimit" }
func (depthLimit) Validate(graphql.ExecutableSchema) error { return nil }

func (d depthLimit) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
	op := oc.Doc.Operations.ForName(oc.OperationName)
	if op == nil {
		return nil
	}
	if depth := selectionDepth(op.SelectionSet, oc.Doc.Fragments, 0, d.max); depth > d.max {
		err := gqlerror.Errorf("operation nests fields more than %d deep", d.max)
		err.Extensions = map[string]any{"code": "DEPTH_LIMIT_EXCEEDED"}
		return err
	}
	return nil
}

// selectionDepth returns how deep set nests below depth, stopping as soon as
// it exceeds limit (so fragment cycles, which validation rejects anyway,
// cannot loop).
func selectionDepth(set ast.SelectionSet, frags ast.FragmentDefinitionList, depth, limit int) int {
	deepest := depth
	for _, sel := range set {
		if deepest > limit {
			return deepest
		}
		var d int
		switch s := sel.(type) {
		case *ast.Field:
			if strings.HasPrefix(s.Name, "__") {
				continue
			}
			d = selectionDepth(s.SelectionSet, frags, depth+1, limit)
		case *ast.InlineFragment:
			d = selectionDepth(s.SelectionSet, frags, depth, limit)
		case *ast.FragmentSpread:
			def := s.Definition
			if def == nil {
				def = frags.ForName(s.Name)
			}
			if def == nil {
				continue
			}
			d = selectionDepth(def.SelectionSet, frags, depth, limit)
		}
		deepest = max(deepest, d)
	}
	return deepest
}

// fieldLimit refuses operations that select field at their top level more
// than max times (aliases, fragments and inline fragments counted): a
// mutation runs its fields one after the other, and some take long.
type fieldLimit struct {
	field string
	max   int
}

var _ interface {
	graphql.HandlerExtension
	graphql.OperationContextMutator
} = fieldLimit{}

func (fieldLimit) ExtensionName() string                   { return "FieldLimit" }
func (fieldLimit) Validate(graphql.ExecutableSchema) error { return nil }

func (l fieldLimit) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
	op := oc.Doc.Operations.ForName(oc.OperationName)
	if op == nil {
		return nil
	}
	if n := countField(op.SelectionSet, oc.Doc.Fragments, l.field, map[string]bool{}); n > l.max {
		err := gqlerror.Errorf("operation selects %s %d times, at most %d are allowed in one request", l.field, n, l.max)
		err.Extensions = map[string]any{"code": "FIELD_LIMIT_EXCEEDED"}
		return err
	}
	return nil
}

// countField counts the fields named name in set, through fragments (each
// fragment spread counts as often as it is spread; seen stops cycles, which
// validation refuses anyway).
func countField(set ast.SelectionSet, frags ast.FragmentDefinitionList, name string, seen map[string]bool) int {
	n := 0
	for _, sel := range set {
		switch s := sel.(type) {
		case *ast.Field:
			if s.Name == name {
				n++
			}
		case *ast.InlineFragment:
			n += countField(s.SelectionSet, frags, name, seen)
		case *ast.FragmentSpread:
			def := s.Definition
			if def == nil {
				def = frags.ForName(s.Name)
			}
			if def == nil || seen[def.Name] {
				continue
			}
			seen[def.Name] = true
			n += countField(def.SelectionSet, frags, name, seen)
			delete(seen, def.Name)
		}
	}
	return n
}

// sizeLimit refuses operations that select more than max fields once their
// fragments are expanded. It runs before the complexity and depth checks,
// which walk the expanded operation: a few hundred bytes of fragments that
// each spread the next twice expand to millions of fields. It counts each
// fragment once (memoised), so its own cost is the document's size.
type sizeLimit struct{ max int }

var _ interface {
	graphql.HandlerExtension
	graphql.OperationContextMutator
} = sizeLimit{}

func (sizeLimit) ExtensionName() string                   { return "SizeLimit" }
func (sizeLimit) Validate(graphql.ExecutableSchema) error { return nil }

func (l sizeLimit) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
	op := oc.Doc.Operations.ForName(oc.OperationName)
	if op == nil {
		return nil
	}
	e := expander{frags: oc.Doc.Fragments, max: l.max, size: map[string]int{}}
	if n := e.count(op.SelectionSet); n > l.max {
		err := gqlerror.Errorf("operation selects more than %d fields once its fragments are expanded", l.max)
		err.Extensions = map[string]any{"code": "COMPLEXITY_LIMIT_EXCEEDED"}
		return err
	}
	return nil
}

// expander counts the fields of a selection set with its fragments
// expanded, each fragment's count worked out once; counts saturate just
// above max.
type expander struct {
	frags ast.FragmentDefinitionList
	max   int
	size  map[string]int // fragment name → its expanded count; -1 while counting it
}

func (e *expander) count(set ast.SelectionSet) int {
	n := 0
	for _, sel := range set {
		switch s := sel.(type) {
		case *ast.Field:
			n += 1 + e.count(s.SelectionSet)
		case *ast.InlineFragment:
			n += e.count(s.SelectionSet)
		case *ast.FragmentSpread:
			name := s.Name
			k, ok := e.size[name]
			switch {
			case ok && k < 0: // a cycle: validation refuses it
			case ok:
				n += k
			default:
				def := s.Definition
				if def == nil {
					def = e.frags.ForName(name)
				}
				if def == nil {
					continue
				}
				e.size[name] = -1
				k = e.count(def.SelectionSet)
				e.size[name] = k
				n += k
			}
		}
		if n > e.max {
			return e.max + 1
		}
	}
	return n
}
