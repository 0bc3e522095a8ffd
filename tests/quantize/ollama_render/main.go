// Renders an Ollama Modelfile TEMPLATE for one chat request the way Ollama's server does for a template that
// reads .Messages (ollama/ollama template/template.go, as of August 2026), so tests compare what an Ollama model
// is prompted with against the Jinja rendering it was fine-tuned on. Written for the tests from what Ollama's
// source does:
//   - consecutive messages of one role are merged with "\n\n" (tool results are not); every system message is
//     also joined with "\n\n" into .System, and stays in .Messages;
//   - tool call arguments and tool parameter properties are plain maps (Go's encoding/json writes their keys
//     sorted, compact, with <, > and & escaped);
//   - the template functions json, currentDate and yesterdayDate; missingkey=zero.
//
// Input (stdin): {"template": "...", "messages": [...], "tools": [...], "think": true|false|null}, the messages
// and tools in Ollama's /api/chat shapes. Output (stdout): the rendered prompt.
//
// With "inspect": true instead, what Ollama reads from the template itself (tools/template.go,
// thinking/template.go, server/images.go): {"vars": the lower-cased names it uses (tools are offered when
// "tools" is one), "tool_tag": what a call starts with, "thinking": the tags around thinking}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

type toolProperty struct {
	AnyOf       []toolProperty          `json:"anyOf,omitempty"`
	Type        json.RawMessage         `json:"type,omitempty"`
	Items       any                     `json:"items,omitempty"`
	Description string                  `json:"description,omitempty"`
	Enum        []any                   `json:"enum,omitempty"`
	Properties  map[string]toolProperty `json:"properties,omitempty"`
	Required    []string                `json:"required,omitempty"`
}

type properties map[string]toolProperty

func (p properties) String() string { return marshal(p) }

type toolFunction struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Parameters  struct {
		Type       string     `json:"type"`
		Defs       any        `json:"$defs,omitempty"`
		Items      any        `json:"items,omitempty"`
		Required   []string   `json:"required,omitempty"`
		Properties properties `json:"properties"`
	} `json:"parameters"`
}

type tool struct {
	Type     string       `json:"type"`
	Items    any          `json:"items,omitempty"`
	Function toolFunction `json:"function"`
}

func (t tool) String() string { return marshal(t) }

type tools []tool

func (t tools) String() string { return marshal(t) }

type arguments map[string]any

func (a arguments) String() string {
	if a == nil {
		return "{}"
	}
	return marshal(a)
}

type toolCall struct {
	ID       string `json:"id"`
	Function struct {
		Index     int       `json:"index"`
		Name      string    `json:"name"`
		Arguments arguments `json:"arguments"`
	} `json:"function"`
}

type message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	Thinking   string     `json:"thinking"`
	Images     []string   `json:"images"`
	ToolCalls  []toolCall `json:"tool_calls"`
	ToolName   string     `json:"tool_name"`
	ToolCallID string     `json:"tool_call_id"`
}

type request struct {
	Template string    `json:"template"`
	Messages []message `json:"messages"`
	Tools    tools     `json:"tools"`
	Think    *bool     `json:"think"`
	Inspect  bool      `json:"inspect"`
}

func marshal(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

var funcs = template.FuncMap{
	"json":          func(v any) string { return marshal(v) },
	"currentDate":   func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
}

func collate(msgs []message) (string, []*message) {
	var system []string
	var collated []*message
	for i := range msgs {
		msgs[i].Role = strings.ToLower(msgs[i].Role)
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[n-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	input, err := io.ReadAll(os.Stdin)
	if err == nil {
		var req request
		if err = json.Unmarshal(input, &req); err == nil {
			var tmpl *template.Template
			tmpl, err = template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template)
			if err == nil && req.Inspect {
				open, close := thinkingTags(tmpl.Tree.Root)
				fmt.Print(marshal(map[string]any{"vars": vars(tmpl.Tree.Root), "tool_tag": toolTag(tmpl.Tree.Root),
					"thinking": []string{open, close}}))
			} else if err == nil {
				system, messages := collate(req.Messages)
				think := req.Think != nil && *req.Think
				err = tmpl.Execute(os.Stdout, map[string]any{
					"System": system, "Messages": messages, "Tools": req.Tools, "Response": "",
					"Think": think, "ThinkLevel": "", "IsThinkSet": req.Think != nil,
				})
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// children: the lists and pipelines under a node, in the order they are written.
func children(n parse.Node) []parse.Node {
	switch x := n.(type) {
	case *parse.ListNode:
		return x.Nodes
	case *parse.ActionNode:
		return []parse.Node{x.Pipe}
	case *parse.IfNode:
		return branch(&x.BranchNode)
	case *parse.RangeNode:
		return branch(&x.BranchNode)
	case *parse.WithNode:
		return branch(&x.BranchNode)
	case *parse.TemplateNode:
		if x.Pipe != nil {
			return []parse.Node{x.Pipe}
		}
	case *parse.PipeNode:
		var out []parse.Node
		for _, c := range x.Cmds {
			out = append(out, c.Args...)
		}
		return out
	}
	return nil
}

func branch(b *parse.BranchNode) []parse.Node {
	out := []parse.Node{b.Pipe, b.List}
	if b.ElseList != nil {
		out = append(out, b.ElseList)
	}
	return out
}

func vars(n parse.Node) []string {
	seen := map[string]bool{}
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		switch x := n.(type) {
		case *parse.FieldNode:
			for _, id := range x.Ident {
				seen[strings.ToLower(id)] = true
			}
		case *parse.VariableNode:
			for _, id := range x.Ident {
				seen[strings.ToLower(id)] = true
			}
		}
		for _, c := range children(n) {
			walk(c)
		}
	}
	walk(n)
	out := []string{}
	for k := range seen {
		out = append(out, k)
	}
	return out
}

// toolTag: the first `if` whose condition reads .ToolCalls, then the first text written in it before any action
// or nested block ends the search, cut at its "{"; "{" when there is none (a bare JSON object is a call).
func toolTag(root *parse.ListNode) string {
	var find func([]parse.Node) *parse.IfNode
	find = func(nodes []parse.Node) *parse.IfNode {
		for _, n := range nodes {
			switch x := n.(type) {
			case *parse.IfNode:
				for _, c := range x.Pipe.Cmds {
					for _, a := range c.Args {
						if f, ok := a.(*parse.FieldNode); ok && contains(f.Ident, "ToolCalls") {
							return x
						}
					}
				}
				if r := find(x.List.Nodes); r != nil {
					return r
				}
				if x.ElseList != nil {
					if r := find(x.ElseList.Nodes); r != nil {
						return r
					}
				}
			case *parse.RangeNode:
				if r := find(x.List.Nodes); r != nil {
					return r
				}
			case *parse.WithNode:
				if r := find(x.List.Nodes); r != nil {
					return r
				}
			}
		}
		return nil
	}
	var text func([]parse.Node) *parse.TextNode
	text = func(nodes []parse.Node) *parse.TextNode {
		for _, n := range nodes {
			switch x := n.(type) {
			case *parse.TextNode:
				if len(strings.TrimSpace(string(x.Text))) > 0 {
					return x
				}
			case *parse.IfNode:
				return text(x.List.Nodes)
			case *parse.RangeNode:
				return text(x.List.Nodes)
			case *parse.WithNode:
				return text(x.List.Nodes)
			case *parse.ActionNode:
				return nil
			}
		}
		return nil
	}
	node := find(root.Nodes)
	if node == nil {
		return "{"
	}
	found := text(node.List.Nodes)
	if found == nil {
		return "{"
	}
	tag, _, _ := strings.Cut(string(found.Text), "{")
	if tag = strings.TrimSpace(tag); tag == "" {
		return "{"
	}
	return tag
}

// thinkingTags: around the last .Thinking written inside a range over .Messages, the first and last texts of
// the list holding it.
func thinkingTags(root *parse.ListNode) (string, string) {
	open, close := "", ""
	var walk func(parse.Node, []parse.Node)
	walk = func(n parse.Node, up []parse.Node) {
		up = append(up, n)
		if f, ok := n.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == "Thinking" {
			inMessages := false
			for i := len(up) - 1; i >= 0; i-- {
				if r, ok := up[i].(*parse.RangeNode); ok {
					inMessages = strings.Contains(r.Pipe.String(), ".Messages")
					break
				}
			}
			if inMessages {
				for i := len(up) - 1; i >= 0; i-- {
					if l, ok := up[i].(*parse.ListNode); ok {
						if t, ok := l.Nodes[0].(*parse.TextNode); ok {
							open = strings.TrimSpace(string(t.Text))
						}
						if t, ok := l.Nodes[len(l.Nodes)-1].(*parse.TextNode); ok {
							close = strings.TrimSpace(string(t.Text))
						}
						break
					}
				}
			}
		}
		for _, c := range children(n) {
			walk(c, up)
		}
	}
	walk(root, nil)
	return open, close
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
