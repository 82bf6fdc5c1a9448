// Small DOM helpers.  Everything the server sends is put in the page as
// text (textContent), never parsed as HTML.

export function $(selector, root = document) {
  const found = root.querySelector(selector);
  if (found === null) {
    throw new Error(`The page has no ${selector}`);
  }
  return found;
}

// An element: el("td", { class: "time", title: "…" }, "text", otherNode).
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) {
      continue;
    }
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      for (const [key, datum] of Object.entries(value)) {
        if (datum !== undefined && datum !== null) {
          node.dataset[key] = String(datum);
        }
      }
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  node.append(...children.filter((child) => child !== undefined && child !== null));
  return node;
}

export function clear(node) {
  node.replaceChildren();
}

// A time from the API (RFC 3339), in the browser's locale and time zone;
// the exact value stays in the cell's title.
// With `clock`, the time of day only.
export function timeCell(value, { clock = false } = {}) {
  if (!value) {
    return el("td", { class: "time" }, "–");
  }
  const date = new Date(value);
  const shown = Number.isNaN(date.getTime()) ? value : clock ? date.toLocaleTimeString() : date.toLocaleString();
  return el("td", { class: "time", title: value }, el("time", { datetime: value }, shown));
}

export function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}
