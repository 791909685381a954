/**
 * The demo page: a chat session over the built @switchboard/client (React hooks).
 * `/?session=abc&user=alice` → fetches /demo/config.json (token and every live edge's URL) and
 * connects to the edges in turn. data-testids are the contract with the browser tests.
 */
import { type ReactElement, StrictMode, useEffect, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { useChatMessages } from '@switchboard/client/react';

interface DemoConfig {
  user_id: string;
  session_id: string;
  token: string;
  urls: string[];
}

function Chat({ config }: { config: DemoConfig }): ReactElement {
  const session = config.session_id;
  // The token is fixed for the page's life: the edge that served the page may be gone later.
  const urls = config.urls.map((u) => `${u}/api/ws/chat/${session}`);
  const chat = useChatMessages(session, config.token, { url: urls });
  const [text, setText] = useState('');
  const typingTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const listEnd = useRef<HTMLLIElement>(null);
  useEffect(() => { listEnd.current?.scrollIntoView({ block: 'end' }); }, [chat.messages]);
  useEffect(() => () => clearTimeout(typingTimer.current), []);

  const onInput = (value: string): void => {
    setText(value);
    if (typingTimer.current === undefined) chat.setTyping(true);
    clearTimeout(typingTimer.current);
    typingTimer.current = setTimeout(() => { typingTimer.current = undefined; chat.setTyping(false); }, 2000);
  };
  const send = (): void => {
    const content = text.trim();
    if (content === '') return;
    chat.sendMessage(content);
    setText('');
    clearTimeout(typingTimer.current);
    if (typingTimer.current !== undefined) chat.setTyping(false);
    typingTimer.current = undefined;
  };
  const typing = chat.typingUsers.filter((u) => u !== config.user_id);
  const url = chat.client?.getStats().url ?? '';

  return (
    <div className="app">
      <header>
        <h1>Switchboard · session {session} · you are {config.user_id}</h1>
        <span className="badge" data-testid="agent-status" title="agent status">{chat.agent.status}</span>
        <span className="badge" data-testid="connection-status" data-status={chat.status} data-url={url}>{chat.status}</span>
      </header>
      <main>
        <ul data-testid="message-list">
          {chat.messages.map((m) => (
            <li key={m.id} className="message" data-testid="message" data-id={m.id} data-offset={m.offset ?? ''}
              data-user={m.userId ?? ''} data-role={m.role} data-complete={String(m.complete)}>
              <span className="who">{m.userId ?? m.role}</span><span className="text">{m.content}</span>
            </li>
          ))}
          <li ref={listEnd} />
        </ul>
      </main>
      <aside>
        <h2>Present</h2>
        <ul data-testid="presence-list">
          {chat.presentUsers.map((u) => <li key={u} data-testid="presence-user" data-user={u}>{u}</li>)}
        </ul>
        {chat.unrecovered.length > 0 && <p data-testid="unrecovered">Reload needed: {chat.unrecovered.join(', ')}</p>}
      </aside>
      <footer>
        <div className="typing" data-testid="typing-indicator">{typing.length > 0 ? `${typing.join(', ')} typing…` : ''}</div>
        <input data-testid="message-input" value={text} placeholder="Message (mention @agent for a streamed reply)"
          onChange={(e) => onInput(e.target.value)} onKeyDown={(e) => { if (e.key === 'Enter') send(); }} />
        <button type="button" data-testid="send-button" onClick={send}>Send</button>
      </footer>
    </div>
  );
}

async function main(): Promise<void> {
  const params = new URLSearchParams(location.search);
  const query = new URLSearchParams();
  const user = params.get('user');
  const session = params.get('session');
  if (user) query.set('user', user);
  if (session) query.set('session', session);
  const root = createRoot(document.getElementById('root') as HTMLElement);
  try {
    const res = await fetch(`/demo/config.json?${query}`);
    if (!res.ok) throw new Error(`/demo/config.json answered ${res.status}`);
    const config = (await res.json()) as DemoConfig;
    root.render(<StrictMode><Chat config={config} /></StrictMode>);
  } catch (err) {
    root.render(<p data-testid="connection-status" data-status="error">error: {String(err)}</p>);
  }
}

void main();
