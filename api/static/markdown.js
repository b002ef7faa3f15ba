/**
 * A safe Markdown subset rendered straight to DOM nodes: fenced code blocks, headings,
 * lists, paragraphs, inline code, bold, italic and http(s) links. Model output is never
 * parsed as HTML: every piece of text becomes a text node, so markup in it stays literal.
 */

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const INLINE = new RegExp(
  [
    /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/.source, // 1,2: inline code
    /\[([^\]\n]+)\]\(([^()\s]+)\)/.source, // 3,4: link
    /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 5: bold
    /__(?=\S)([\s\S]*?\S)__(?!\w)/.source, // 6: bold
    /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source, // 7: italic
    /(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/.source, // 8: italic
  ].join("|"),
  "g",
);

/** Replace the children of `container` with the rendering of `source`. */
export function renderMarkdown(source, container) {
  container.replaceChildren(...parseBlocks(source.split(/\r\n|\r|\n/)));
}

function parseBlocks(lines) {
  const nodes = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === "") { i += 1; continue; }
    const fence = FENCE.exec(line);
    if (fence) { i = codeBlock(lines, i, fence, nodes); continue; }
    const heading = HEADING.exec(line);
    if (heading) { nodes.push(headingNode(heading)); i += 1; continue; }
    if (LIST_ITEM.test(line)) { i = list(lines, i, nodes); continue; }
    i = paragraph(lines, i, nodes);
  }
  return nodes;
}

function codeBlock(lines, start, fence, nodes) {
  const [, marker, lang] = fence;
  const body = [];
  let i = start + 1;
  // An unclosed fence (a reply still streaming) runs to the end of the text.
  while (i < lines.length && !isClosingFence(lines[i], marker)) body.push(lines[i++]);
  const pre = el("pre");
  const code = el("code", body.join("\n"));
  if (lang) pre.dataset.lang = lang;
  pre.append(code);
  nodes.push(pre);
  return i + 1;
}

function isClosingFence(line, marker) {
  const trimmed = line.trim();
  return trimmed.length >= marker.length && trimmed === marker[0].repeat(trimmed.length);
}

function headingNode([, hashes, text]) {
  // Inside a chat bubble even "#" stays modest: h3..h6.
  const node = el(`h${Math.min(6, hashes.length + 2)}`);
  node.append(...inline(text));
  return node;
}

function paragraph(lines, start, nodes) {
  const node = el("p");
  let i = start;
  const text = [];
  while (i < lines.length && lines[i].trim() !== "" && !startsBlock(lines[i])) text.push(lines[i++]);
  text.forEach((line, n) => {
    if (n > 0) node.append(el("br"));
    node.append(...inline(line));
  });
  nodes.push(node);
  return i;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || LIST_ITEM.test(line);
}

/** Consecutive list items; deeper indentation opens a nested list in the last item. */
function list(lines, start, nodes) {
  const stack = []; // [{indent, listNode}]
  let i = start;
  while (i < lines.length) {
    const item = LIST_ITEM.exec(lines[i]);
    if (!item) break;
    const indent = item[1].replace(/\t/g, "    ").length;
    const ordered = /\d/.test(item[2]);
    while (stack.length > 1 && indent < stack.at(-1).indent) stack.pop();
    const top = stack.at(-1);
    if (!top || indent > top.indent + 1) {
      const listNode = el(ordered ? "ol" : "ul");
      if (ordered && parseInt(item[2], 10) !== 1) listNode.start = parseInt(item[2], 10);
      const parentItem = top?.listNode.lastElementChild;
      if (parentItem) parentItem.append(listNode);
      else nodes.push(listNode);
      stack.push({ indent, listNode });
    }
    const li = el("li");
    li.append(...inline(item[3]));
    stack.at(-1).listNode.append(li);
    i += 1;
  }
  return i;
}

/** Inline spans of one line of text, as DOM nodes. */
function inline(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
    out.push(inlineNode(m));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(document.createTextNode(text.slice(last)));
  return out;
}

function inlineNode(m) {
  if (m[2] !== undefined) return el("code", m[2].replace(/^ (.*) $/, "$1"));
  if (m[3] !== undefined) return link(m[3], m[4], m[0]);
  const strong = m[5] ?? m[6];
  if (strong !== undefined) return wrap("strong", strong);
  return wrap("em", m[7] ?? m[8]);
}

function wrap(tag, text) {
  const node = el(tag);
  node.append(...inline(text));
  return node;
}

/** Only absolute http(s) URLs become links; anything else stays literal text. */
function link(label, href, literal) {
  const url = safeUrl(href);
  if (!url) return document.createTextNode(literal);
  const a = el("a", label);
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

function safeUrl(href) {
  try {
    const url = new URL(href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}
