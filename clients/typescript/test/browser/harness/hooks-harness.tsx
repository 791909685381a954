/**
 * A page for the hooks test: renders the state of useChatMessages and useAgentStatus as JSON in
 * <pre id="state">, and exposes sendMessage/setTyping on window. Config comes from the URL hash.
 */
import { createRoot } from 'react-dom/client';
import { type ReactElement, useEffect } from 'react';
import { useAgentStatus, useChatMessages } from '../../../src/react.js';

interface Config { session: string; user: string; token: string; chatUrls: string[]; agentUrl: string }

declare global {
  interface Window { harness?: { send: (t: string) => string | undefined; typing: (on: boolean) => void } }
}

function Harness({ c }: { c: Config }): ReactElement {
  const chat = useChatMessages(c.session, c.token, { url: c.chatUrls });
  const agent = useAgentStatus(c.user, c.token, { url: c.agentUrl });
  useEffect(() => { window.harness = { send: chat.sendMessage, typing: chat.setTyping }; }, [chat.sendMessage, chat.setTyping]);
  const state = {
    status: chat.status, messages: chat.messages.map(({ parts: _p, ...m }) => m), typing: chat.typingUsers,
    presence: chat.presentUsers, sessionAgent: chat.agent, agent,
  };
  return <pre id="state">{JSON.stringify(state)}</pre>;
}

const c = JSON.parse(decodeURIComponent(location.hash.slice(1))) as Config;
createRoot(document.getElementById('root') as HTMLElement).render(<Harness c={c} />);
